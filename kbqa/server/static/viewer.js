// The source viewer: a dialog showing one document as the text that was ingested, grouped by
// page (PDF) or heading, scrolled to the cited chunk with its evidence marked; and the original
// file, fetched with the API key and opened (or saved) from a blob.
//
// Opened files get a type the browser shows inertly (PDF, images, everything textual as plain
// text): a blob: URL has this page's origin, so an HTML or SVG document opened as such could
// run its scripts with the page's stored key.

import { ApiError, api, fetchOriginal } from "./api.js";
import { openModal } from "./dialogs.js";
import { byId, h } from "./dom.js";
import { highlighted } from "./evidence.js";
import { formatNumber, setText } from "./i18n.js";

const VIEWABLE = new Map([
  ["application/pdf", "application/pdf"],
  ["image/png", "image/png"],
  ["image/jpeg", "image/jpeg"],
]);
const TEXT_TYPES = /^(text\/|application\/(json|jsonl|xml)$)/;
const URL_LIFETIME_MS = 60_000; // long enough for the new tab or the download to read it
const MAX_OVERLAP = 400; // chunk overlap the viewer hides (ingest's default overlap is 50)
const MIN_OVERLAP = 8; // shorter repeats are more likely coincidence than overlap

let current = null; // {kb, document} shown now; null while loading or after a failure
let ticket = 0; // the latest openViewer call: a slower, older load that finishes late is dropped

/**
 * Open the viewer at `cited` ({doc_id, chunk_id, text, evidence, source}), looking the document
 * up in the knowledge bases `kbs` (the ones the question was asked of), in order.
 */
export async function openViewer(kbs, cited) {
  const dialog = byId("viewer-dialog");
  const body = byId("viewer-body");
  const status = byId("viewer-status");
  const mine = ++ticket;
  current = null;
  byId("viewer-title").textContent = cited.source ?? "";
  byId("viewer-meta").textContent = "";
  body.replaceChildren();
  setText(status, "viewer.loading");
  setOriginalButtons(false);
  if (!dialog.open) openModal(dialog, byId("viewer-close"));
  try {
    const { kb, detail } = await findDocument(kbs, cited.doc_id);
    if (mine !== ticket) return;
    current = { kb, document: detail.document };
    show(detail, cited);
  } catch (error) {
    if (mine === ticket) setText(status, "viewer.failed", { message: error.message });
  }
}

async function findDocument(kbs, docId) {
  let missing = new ApiError(404, "document_not_found", "");
  for (const kb of kbs) {
    try {
      return { kb, detail: await api.document(kb, docId) };
    } catch (error) {
      if (error.status !== 404) throw error;
      missing = error;
    }
  }
  throw missing;
}

function show({ document: doc, chunks }, cited) {
  byId("viewer-title").textContent = doc.source;
  setText(byId("viewer-meta"), "viewer.meta", {
    chunks: doc.chunks,
    size: doc.size == null ? "—" : fileSize(doc.size),
  });
  const target =
    chunks.find((c) => c.chunk_id === cited.chunk_id) ?? chunks.find((c) => c.text === cited.text);
  const notes = [];
  if (!doc.available) notes.push("viewer.unavailable");
  else if (doc.modified) notes.push("viewer.modified");
  if (cited.chunk_id && !target) notes.push("viewer.citedMissing");
  const status = byId("viewer-status");
  status.replaceChildren(...notes.map((key) => setText(h("span", { class: "viewer-note" }), key)));
  setOriginalButtons(doc.available);

  const byPage = chunks.some((c) => c.page != null);
  const overlaps = new Map(chunks.map((c, i) => [c, i ? overlap(chunks[i - 1].text, c.text) : 0]));
  const body = byId("viewer-body");
  body.replaceChildren(
    ...groups(chunks, byPage).map(({ key, members }) =>
      h(
        "section",
        { class: "viewer-group" },
        groupHeading(key, byPage),
        members.map((c) => chunkNode(c, c === target ? cited.evidence : null, overlaps.get(c))),
      ),
    ),
  );
  const node = target && body.querySelector(".viewer-chunk.cited");
  if (node) {
    node.scrollIntoView({ block: "center" });
    node.focus({ preventScroll: true });
  }
}

/** Consecutive chunks of one page (or one heading), in reading order. */
function groups(chunks, byPage) {
  const found = [];
  for (const chunk of chunks) {
    const key = byPage ? chunk.page : chunk.heading || "";
    if (!found.length || found.at(-1).key !== key) found.push({ key, members: [] });
    found.at(-1).members.push(chunk);
  }
  return found;
}

function groupHeading(key, byPage) {
  if (byPage) {
    return key == null ? null : setText(h("h3"), "viewer.page", { page: key });
  }
  return key ? h("h3", {}, key) : null;
}

/**
 * How many leading characters of `text` repeat the end of the chunk before it: ingest carries
 * the last sentence(s) of a chunk over into the next, and the viewer shows them once.
 */
function overlap(previous, text) {
  // The shortest repeat that ends before white space: a document that repeats itself must not
  // lose more than the carried-over sentences.
  const longest = Math.min(MAX_OVERLAP, previous.length, text.length - 1);
  for (let k = MIN_OVERLAP; k <= longest; k++) {
    if (/\s/.test(text[k]) && previous.endsWith(text.slice(0, k))) return k;
  }
  return 0;
}

/** A chunk's paragraph: the cited one whole, with its evidence; others without their overlap. */
function chunkNode(chunk, evidence, skip) {
  const cited = evidence !== null;
  const text = cited ? chunk.text : chunk.text.slice(skip).trimStart();
  return h(
    "p",
    {
      class: cited ? "viewer-chunk cited" : "viewer-chunk",
      tabindex: cited ? "-1" : undefined,
      dataset: { chunkId: chunk.chunk_id },
    },
    cited ? highlighted(text, evidence ?? []) : text,
  );
}

function fileSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${formatNumber(bytes / 1024, 1)} KB`;
  return `${formatNumber(bytes / 1024 ** 2, 1)} MB`;
}

function setOriginalButtons(enabled) {
  byId("viewer-open").disabled = !enabled;
  byId("viewer-download").disabled = !enabled;
}

/** Open the original in a new tab (download = false) or save it; errors go to the status. */
async function original(download) {
  if (!current) return;
  const { kb, document: doc } = current;
  const type = inertType(doc.content_type);
  // The tab is opened now, while the click still counts as the user's: a tab opened after the
  // fetch would meet the popup blocker.
  const tab = download || !type ? null : window.open("", "_blank");
  try {
    const blob = await fetchOriginal(kb, doc.doc_id);
    const url = URL.createObjectURL(new Blob([blob], { type: type ?? blob.type }));
    setTimeout(() => URL.revokeObjectURL(url), URL_LIFETIME_MS);
    if (tab) tab.location.href = url;
    else h("a", { href: url, download: doc.source.split("/").pop() || "document" }).click();
  } catch (error) {
    tab?.close();
    setText(byId("viewer-status"), "viewer.failed", { message: error.message });
  }
}

function inertType(contentType) {
  if (VIEWABLE.has(contentType)) return VIEWABLE.get(contentType);
  return TEXT_TYPES.test(contentType) ? "text/plain;charset=utf-8" : null;
}

byId("viewer-open").addEventListener("click", () => original(false));
byId("viewer-download").addEventListener("click", () => original(true));
