// The manage view: knowledge bases (create, pick, delete) and the picked one's documents
// (upload by file picker or drag and drop, view in the source viewer, delete).

import { api } from "./api.js";
import { confirmDialog } from "./dialogs.js";
import { byId, h } from "./dom.js";
import { setAttr, setText, t } from "./i18n.js";
import { onKbs, reloadKbs } from "./store.js";
import { setSupported, supportedExtensions, UploadCard } from "./upload.js";
import { openViewer } from "./viewer.js";

const PICKED_STORAGE = "kbqa.manageKb";
const MAX_NAME_LENGTH = 64;

/** Why `name` is not a valid KB name ([messageKey, args]), or null; mirrors storage/names.py. */
export function kbNameProblem(name) {
  const chars = [...name.normalize("NFC")]; // code points, as Python counts them
  if (chars.length === 0) return ["manage.nameEmpty"];
  if (chars.length > MAX_NAME_LENGTH) return ["manage.nameLong"];
  if (chars[0] === ".") return ["manage.nameDot"];
  const bad = [...new Set(chars.filter((ch) => !/^[\p{L}\p{Nd}_.-]$/u.test(ch)))];
  if (!bad.length) return null;
  return ["manage.nameChars", { chars: bad.slice(0, 5).map((ch) => `“${ch}”`).join(" ") }];
}

export class ManageView {
  constructor() {
    this.kbList = byId("kb-list");
    this.docList = byId("doc-list");
    this.docsHeading = byId("docs-heading");
    this.docsStatus = byId("docs-status");
    this.error = byId("manage-error");
    this.uploads = byId("uploads");
    this.dropZone = byId("drop-zone");
    this.fileInput = byId("file-input");
    this.picked = sessionStorage.getItem(PICKED_STORAGE);
    this.kbs = [];

    byId("create-kb-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.createKb();
    });
    byId("new-kb-name").addEventListener("input", () => this.showNameProblem(null));
    byId("choose-files").addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.upload([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    this.showFormats();
    api.health().then(
      (health) => {
        if (health.formats?.length) {
          setSupported(health.formats);
          this.showFormats();
        }
      },
      () => {}, // the core list stays
    );
    this.bindDrop();
    onKbs((kbs) => this.showKbs(kbs));
  }

  showFormats() {
    const formats = supportedExtensions();
    this.fileInput.accept = formats.join(",");
    setText(byId("formats"), "manage.formats", { formats: formats.join(" ") });
  }

  bindDrop() {
    const zone = this.dropZone;
    let depth = 0; // dragenter/leave fire for every child: count them
    zone.addEventListener("dragenter", (e) => {
      e.preventDefault();
      depth += 1;
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      zone.classList.remove("dragging");
      this.upload([...(e.dataTransfer?.files ?? [])]);
    });
    // A file dropped beside the zone must not make the browser navigate away to it.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (e) => {
        if (!zone.contains(e.target)) e.preventDefault();
      });
    }
  }

  showKbs(kbs) {
    this.kbs = kbs;
    const names = kbs.map((kb) => kb.name);
    if (!names.includes(this.picked)) this.picked = names[0] ?? null;
    this.kbList.replaceChildren(...kbs.map((kb) => this.kbItem(kb)));
    if (!kbs.length) this.kbList.append(setText(h("li", { class: "hint" }), "manage.noKbs"));
    this.loadDocuments();
  }

  kbItem(kb) {
    const summary = kb.error
      ? setText(h("small", { class: "error" }), "manage.kbDamaged", { error: kb.error })
      : setText(h("small"), "manage.kbSummary", { documents: kb.documents, chunks: kb.chunks });
    const pick = h(
      "button",
      {
        type: "button",
        class: "kb-pick",
        "aria-current": kb.name === this.picked ? "true" : "false",
        onclick: () => this.pick(kb.name),
      },
      h("span", { class: "kb-name" }, kb.name),
      summary,
    );
    const remove = setText(
      h("button", { type: "button", class: "danger", onclick: () => this.deleteKb(kb.name) }),
      "manage.delete",
    );
    setAttr(remove, "aria-label", "manage.deleteKb", { name: kb.name });
    return h("li", { class: "kb-item" }, pick, remove);
  }

  pick(name) {
    this.picked = name;
    sessionStorage.setItem(PICKED_STORAGE, name);
    for (const button of this.kbList.querySelectorAll(".kb-pick")) {
      const current = button.querySelector(".kb-name").textContent === name;
      button.setAttribute("aria-current", current ? "true" : "false");
    }
    this.loadDocuments();
  }

  async loadDocuments() {
    const kb = this.picked;
    this.dropZone.classList.toggle("disabled", !kb);
    byId("choose-files").disabled = !kb;
    if (!kb) {
      setText(this.docsHeading, "manage.docs");
      setText(this.docsStatus, "manage.pickKbFirst");
      this.docList.replaceChildren();
      return;
    }
    setText(this.docsHeading, "manage.docsIn", { name: kb });
    try {
      const { documents } = await api.listDocuments(kb);
      if (kb !== this.picked) return; // picked another while this loaded
      this.showDocuments(kb, documents);
    } catch (error) {
      this.error.textContent = error.message;
    }
  }

  showDocuments(kb, documents) {
    documents.sort((a, b) => a.source.localeCompare(b.source));
    this.docList.replaceChildren(...documents.map((doc) => this.docItem(kb, doc)));
    if (documents.length) this.docsStatus.textContent = "";
    else setText(this.docsStatus, "manage.noDocs");
  }

  docItem(kb, doc) {
    const remove = setText(
      h("button", { type: "button", class: "danger", onclick: () => this.deleteDocument(kb, doc) }),
      "manage.delete",
    );
    setAttr(remove, "aria-label", "manage.deleteDoc", { name: doc.source });
    const view = setText(
      h("button", {
        type: "button",
        class: "view",
        "aria-haspopup": "dialog",
        onclick: () => openViewer([kb], doc),
      }),
      "manage.view",
    );
    setAttr(view, "aria-label", "manage.viewDoc", { name: doc.source });
    return h(
      "li",
      { class: "doc-item" },
      h("span", { class: "doc-name" }, doc.source),
      setText(h("small"), "manage.chunks", { chunks: doc.chunks }),
      view,
      remove,
    );
  }

  async createKb() {
    const input = byId("new-kb-name");
    const name = input.value.trim().normalize("NFC");
    const problem = kbNameProblem(name);
    if (problem) return this.showNameProblem(problem);
    const button = byId("create-kb");
    button.disabled = true;
    setText(byId("new-kb-status"), "manage.creating", { name });
    try {
      await api.createKb(name);
    } catch (error) {
      return this.showNameProblem(null, error.message);
    } finally {
      button.disabled = false;
    }
    input.value = "";
    setText(byId("new-kb-status"), "manage.created", { name });
    this.picked = name;
    sessionStorage.setItem(PICKED_STORAGE, name);
    await this.reload();
  }

  showNameProblem(problem, message = "") {
    const error = byId("new-kb-error");
    if (problem) setText(error, ...problem);
    else {
      delete error.dataset.i18n;
      error.textContent = message;
    }
    const invalid = Boolean(problem || message);
    byId("new-kb-name").setAttribute("aria-invalid", String(invalid));
    if (invalid) byId("new-kb-name").focus();
    byId("new-kb-status").textContent = "";
  }

  async deleteKb(name) {
    if (!(await confirmDialog(t("confirm.deleteKb", { name })))) return;
    await this.attempt(() => api.deleteKb(name));
    await this.reload();
  }

  async deleteDocument(kb, doc) {
    const message = t("confirm.deleteDoc", { name: doc.source, kb });
    if (!(await confirmDialog(message))) return;
    await this.attempt(() => api.deleteDocument(kb, doc.doc_id));
    await this.reload();
  }

  async upload(files) {
    if (!files.length) return;
    if (!this.picked) {
      setText(this.docsStatus, "manage.pickKbFirst");
      return;
    }
    const card = new UploadCard(this.picked, files);
    this.uploads.prepend(card.element);
    await card.run();
    await this.reload();
  }

  async attempt(action) {
    this.error.textContent = "";
    try {
      await action();
    } catch (error) {
      this.error.textContent = error.message;
    }
  }

  /** Reload the KB list (both views) and with it the picked KB's documents. */
  async reload() {
    try {
      await reloadKbs();
    } catch (error) {
      this.error.textContent = error.message;
    }
  }
}
