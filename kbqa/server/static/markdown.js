// A small Markdown renderer for answers. It builds DOM nodes of a fixed set of elements
// (p, br, h3–h6, ul, ol, li, blockquote, pre, code, strong, em) and puts all text in text nodes,
// so nothing a model or a document says can become markup. Raw HTML in the input stays text.
// Citations such as [1], [2, 3] or 【1】 become nodes made by the caller's `cite(n)`.

const FENCE = /^\s{0,3}(```|~~~)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}\d{1,9}[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;

/**
 * Render `text` into a DocumentFragment.
 * cite(n) returns the node for citation n, or null when there is no source n (left as text).
 */
export function renderMarkdown(text, cite = () => null) {
  const fragment = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const [node, next] = block(lines, i, cite);
    if (node) fragment.append(node);
    i = next;
  }
  return fragment;
}

/** The block starting at lines[i] and the index after it. */
function block(lines, i, cite) {
  const line = lines[i];
  if (line.trim() === "") return [null, i + 1];
  if (FENCE.test(line)) return codeBlock(lines, i);
  const heading = HEADING.exec(line);
  if (heading) {
    // Answers sit under the page's h1/h2: their headings start at h3.
    const level = Math.min(heading[1].length + 2, 6);
    return [withInline(`h${level}`, heading[2], cite), i + 1];
  }
  if (RULE.test(line)) return [document.createElement("hr"), i + 1];
  if (BULLET.test(line)) return list(lines, i, "ul", BULLET, cite);
  if (NUMBERED.test(line)) return list(lines, i, "ol", NUMBERED, cite);
  if (QUOTE.test(line)) return quote(lines, i, cite);
  return paragraph(lines, i, cite);
}

function codeBlock(lines, i) {
  const marker = FENCE.exec(lines[i])[1];
  const body = [];
  let j = i + 1;
  while (j < lines.length && !lines[j].trimStart().startsWith(marker)) body.push(lines[j++]);
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = body.join("\n");
  pre.append(code);
  return [pre, j + 1];
}

function list(lines, i, tag, pattern, cite) {
  const el = document.createElement(tag);
  let j = i;
  let item = null;
  while (j < lines.length && lines[j].trim() !== "") {
    const match = pattern.exec(lines[j]);
    if (match) {
      item = withInline("li", match[1], cite);
      el.append(item);
    } else if (/^\s+\S/.test(lines[j]) && item) {
      // A continuation line of the current item.
      item.append(document.createElement("br"), ...inline(lines[j].trim(), cite));
    } else {
      break;
    }
    j += 1;
  }
  return [el, j];
}

function quote(lines, i, cite) {
  const body = [];
  let j = i;
  for (let m; j < lines.length && (m = QUOTE.exec(lines[j])); j += 1) body.push(m[1]);
  const el = document.createElement("blockquote");
  el.append(renderMarkdown(body.join("\n"), cite));
  return [el, j];
}

function paragraph(lines, i, cite) {
  const p = document.createElement("p");
  let j = i;
  while (j < lines.length && lines[j].trim() !== "" && (j === i || !startsBlock(lines[j]))) {
    // Models write one sentence per line on purpose: keep their line breaks.
    if (j > i) p.append(document.createElement("br"));
    p.append(...inline(lines[j].trim(), cite));
    j += 1;
  }
  return [p, j];
}

function startsBlock(line) {
  return [FENCE, HEADING, BULLET, NUMBERED, QUOTE, RULE].some((re) => re.test(line));
}

function withInline(tag, text, cite) {
  const el = document.createElement(tag);
  el.append(...inline(text, cite));
  return el;
}

// `code`, **strong**, *em*, and citations [1] / [1, 2] / [1][2] / 【1】. Underscores are left
// alone: in identifiers (window.__name__, snake_case) they are far more common than emphasis.
const INLINE = new RegExp(
  [
    /`([^`]+)`/.source,
    /\*\*(?=\S)(.+?)(?<=\S)\*\*/.source,
    /\*(?=[^\s*])([^*]+?)(?<=\S)\*/.source,
    /[[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]/.source,
  ].join("|"),
  "g",
);

/** Inline nodes for one line of text. */
export function inline(text, cite = () => null) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(...inlineMatch(match, cite));
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function inlineMatch(match, cite) {
  const [whole, code, strong, em, citations] = match;
  if (code !== undefined) return [element("code", [document.createTextNode(code)])];
  if (strong !== undefined) return [element("strong", inline(strong, cite))];
  if (em !== undefined) return [element("em", inline(em, cite))];
  const numbers = citations.split(/[,，、]/).map((n) => Number.parseInt(n.trim(), 10));
  const nodes = numbers.map((n) => cite(n));
  // Only when every number names a source; "[2024]" or an array index stays as written.
  if (nodes.some((node) => !node)) return [document.createTextNode(whole)];
  return nodes;
}

function element(tag, children) {
  const el = document.createElement(tag);
  el.append(...children);
  return el;
}
