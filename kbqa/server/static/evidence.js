// Evidence spans drawn into a source's text as <mark> elements.
//
// The server gives each span as {start, end, text, score, basis} with start/end counted in
// Unicode code points (Python string indices). JavaScript strings count UTF-16 code units, so an
// emoji or a rare CJK character before a span would shift it by one per such character: offsets
// are converted here before slicing. A span whose slice does not read as its `text` (the chunk
// changed since the answer) is looked up by its text instead, and dropped if it is not there.

import { h } from "./dom.js";
import { setAttr } from "./i18n.js";

/** UTF-16 index of every code point index 0..n of `text` (n + 1 entries). */
function codeUnitOffsets(text) {
  const offsets = [0];
  let unit = 0;
  for (const ch of text) {
    unit += ch.length;
    offsets.push(unit);
  }
  return offsets;
}

/**
 * The spans of `evidence` as sorted, non-overlapping UTF-16 ranges of `text`:
 * [{from, to, basis, score}]. Overlapping spans merge (the higher score's basis wins).
 */
export function evidenceRanges(text, evidence) {
  if (!Array.isArray(evidence) || typeof text !== "string") return [];
  const offsets = codeUnitOffsets(text);
  const ranges = [];
  for (const span of evidence) {
    const range = locate(text, offsets, span);
    if (range) ranges.push({ ...range, basis: span.basis, score: Number(span.score) || 0 });
  }
  ranges.sort((a, b) => a.from - b.from || b.to - a.to);
  const merged = [];
  for (const range of ranges) {
    const last = merged.at(-1);
    if (last && range.from < last.to) {
      if (range.score > last.score) Object.assign(last, { basis: range.basis, score: range.score });
      last.to = Math.max(last.to, range.to);
    } else {
      merged.push({ ...range });
    }
  }
  return merged;
}

function locate(text, offsets, span) {
  const { start, end } = span ?? {};
  const wanted = typeof span?.text === "string" ? span.text : null;
  if (Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start < end) {
    if (end < offsets.length) {
      const range = { from: offsets[start], to: offsets[end] };
      if (wanted === null || text.slice(range.from, range.to) === wanted) return range;
    }
  }
  if (!wanted) return null;
  const at = text.indexOf(wanted);
  return at < 0 ? null : { from: at, to: at + wanted.length };
}

/** Nodes of `text` with each evidence range in a <mark class="evidence">: never markup. */
export function highlighted(text, evidence) {
  const nodes = [];
  let at = 0;
  for (const range of evidenceRanges(text, evidence)) {
    if (range.from > at) nodes.push(document.createTextNode(text.slice(at, range.from)));
    const basis = range.basis === "question" ? "question" : "answer";
    const mark = h("mark", { class: `evidence basis-${basis}` }, text.slice(range.from, range.to));
    setAttr(mark, "title", `evidence.${basis}`);
    nodes.push(mark);
    at = range.to;
  }
  if (at < text.length) nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}
