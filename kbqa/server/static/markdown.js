// A small Markdown renderer for answers. It builds DOM nodes of a fixed set of elements
// (p, br, hr, h3–h6, ul, ol, li, blockquote, pre, code, strong, em, a, and GFM pipe tables) and
// puts all text in text nodes, so nothing a model or a document says can become markup. Raw HTML
// in the input stays text. Links become <a> only for http:, https: and mailto: URLs (see
// safeHref); any other link stays as written. Citations such as [1], [2, 3] or 【1】 become nodes
// made by the caller's `cite(n)`.

const FENCE = /^\s{0,3}(```|~~~)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}\d{1,9}[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
// The row under a table's header: | :--- | ---: | :-: | (outer pipes optional, one at least).
const TABLE_DELIMITER = /^\s{0,3}\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

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
  if (tableStarts(lines, i)) return table(lines, i, cite);
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
  while (j < lines.length && lines[j].trim() !== "" && (j === i || !interrupts(lines, j))) {
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

/** Whether lines[j] ends a paragraph: a table may follow its introduction without a blank line. */
function interrupts(lines, j) {
  return startsBlock(lines[j]) || tableStarts(lines, j);
}

/** A GFM table starts at lines[i]: a header row, then a delimiter row of as many cells. */
function tableStarts(lines, i) {
  const [header, delimiter] = [lines[i], lines[i + 1]];
  if (delimiter === undefined || !header.includes("|") || !delimiter.includes("|")) return false;
  return TABLE_DELIMITER.test(delimiter) && cells(header).length === cells(delimiter).length;
}

/**
 * The table at lines[i], in a box that scrolls sideways (a wide table must not widen the page).
 * Body rows run to a blank line, another block or a line without a pipe (GFM would make that a
 * row, but after a table models write their next sentence so); each row is padded or cut to the
 * header's width.
 */
function table(lines, i, cite) {
  const header = cells(lines[i]);
  const aligns = cells(lines[i + 1]).map(alignment);
  const row = (values, tag) =>
    element(
      "tr",
      header.map((_, k) => {
        const cell = element(tag, inline(values[k] ?? "", cite));
        if (tag === "th") cell.setAttribute("scope", "col");
        if (aligns[k]) cell.className = `align-${aligns[k]}`;
        return cell;
      }),
    );
  const rows = [];
  let j = i + 2;
  while (j < lines.length && /(^|[^\\])\|/.test(lines[j]) && !startsBlock(lines[j])) {
    rows.push(row(cells(lines[j]), "td"));
    j += 1;
  }
  const parts = [element("thead", [row(header, "th")])];
  if (rows.length > 0) parts.push(element("tbody", rows));
  const scroller = element("div", [element("table", parts)]);
  scroller.className = "table-scroll";
  scroller.tabIndex = 0; // so keyboard users can scroll it too
  return [scroller, j];
}

/** The cells of a table row, split at unescaped pipes, without the outer pipes; `\|` is a pipe. */
function cells(line) {
  const text = line.trim();
  const row = [];
  let cell = "";
  for (let k = 0; k < text.length; k += 1) {
    if (text[k] === "\\" && text[k + 1] === "|") {
      cell += "|";
      k += 1;
    } else if (text[k] === "|") {
      row.push(cell);
      cell = "";
    } else {
      cell += text[k];
    }
  }
  row.push(cell);
  if (text.startsWith("|")) row.shift();
  if (row.length > 1 && /(^|[^\\])\|$/.test(text)) row.pop();
  return row.map((c) => c.trim());
}

/** "left", "center", "right" or null, from a delimiter cell such as ":---:". */
function alignment(delimiter) {
  const left = delimiter.startsWith(":");
  const right = delimiter.endsWith(":");
  if (left && right) return "center";
  if (right) return "right";
  return left ? "left" : null;
}

function withInline(tag, text, cite) {
  const el = document.createElement(tag);
  el.append(...inline(text, cite));
  return el;
}

// `code`, **strong**, *em*, [links](url), citations [1] / [1, 2] / [1][2] / 【1】 and bare
// http(s) URLs. Underscores are left alone: in identifiers (window.__name__, snake_case) they are
// far more common than emphasis.
const CITATION_NUMBERS = /\d{1,3}(?:\s*[,，、]\s*\d{1,3})*/.source;
const INLINE = new RegExp(
  [
    /`([^`]+)`/.source,
    /\*\*(?=\S)(.+?)(?<=\S)\*\*/.source,
    /\*(?=[^\s*])([^*]+?)(?<=\S)\*/.source,
    // [text](url) or [text](<url> "title"); the URL may hold one level of parentheses (Wikipedia).
    /\[([^[\]]+)\]\(\s*(<[^<>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+"[^"]*")?\s*\)/.source,
    `[[【]\\s*(${CITATION_NUMBERS})\\s*[\\]】]`,
    // A bare URL ends at a space, a quote, markup or CJK punctuation; autolink() trims its end.
    /(?<![\w/.:@-])(https?:\/\/[^\s<>"`‘’“”\u3000-\u303f\uff00-\uffef]+)/.source,
  ].join("|"),
  "g",
);
const ONLY_CITATIONS = new RegExp(`^\\s*${CITATION_NUMBERS}\\s*$`);
const SAFE_SCHEME = /^(?:https?:\/\/|mailto:)/i;

/**
 * Inline nodes for one line of text. Inside a link's text (`inLink`) there are no links and no
 * citations: interactive elements must not nest, so those stay as written.
 */
export function inline(text, cite = () => null, inLink = false) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    nodes.push(...inlineMatch(match, cite, inLink));
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function inlineMatch(match, cite, inLink) {
  const [whole, code, strong, em, label, url, citations, bare] = match;
  if (code !== undefined) return [element("code", [document.createTextNode(code)])];
  if (strong !== undefined) return [element("strong", inline(strong, cite, inLink))];
  if (em !== undefined) return [element("em", inline(em, cite, inLink))];
  if (inLink) return [document.createTextNode(whole)];
  if (label !== undefined) return markdownLink(whole, label, url, cite);
  if (bare !== undefined) return autolink(bare);
  return citationNodes(citations, cite) ?? [document.createTextNode(whole)];
}

/** Nodes for citations "1, 2", or null unless every number names a source ("[2024]" stays). */
function citationNodes(numbers, cite) {
  const nodes = numbers.split(/[,，、]/).map((n) => cite(Number.parseInt(n.trim(), 10)));
  return nodes.some((node) => !node) ? null : nodes;
}

function markdownLink(whole, label, url, cite) {
  // "[1](https://…)" is a citation followed by a URL in parentheses, not a link named "1".
  const citations = ONLY_CITATIONS.test(label) ? citationNodes(label, cite) : null;
  if (citations) return [...citations, ...inline(whole.slice(label.length + 2), cite)];
  const href = safeHref(url.replace(/^<(.*)>$/, "$1"));
  if (!href) return [document.createTextNode(whole)];
  return [anchor(href, inline(label, cite, true))];
}

/**
 * A bare URL as a link, less the punctuation that ends its sentence ("see https://x.org/a.")
 * and a closing bracket it did not open ("(https://x.org)").
 */
function autolink(text) {
  let end = text.length;
  for (;;) {
    const tail = text[end - 1];
    if ("?!.,:;*_~'".includes(tail)) {
      end -= 1;
    } else if (tail === ")" || tail === "]") {
      const open = tail === ")" ? "(" : "[";
      const url = text.slice(0, end);
      if (url.split(open).length >= url.split(tail).length) break;
      end -= 1;
    } else {
      break;
    }
  }
  const href = safeHref(text.slice(0, end));
  if (!href) return [document.createTextNode(text)];
  const nodes = [anchor(href, [document.createTextNode(text.slice(0, end))])];
  if (end < text.length) nodes.push(document.createTextNode(text.slice(end)));
  return nodes;
}

/**
 * The URL to put in href, or null. Only absolute http(s) URLs with a host and mailto: URLs
 * pass; the scheme is checked on the text as written (so "java\tscript:" or "//host" fail)
 * and again after the browser's URL parser has normalised it.
 */
export function safeHref(text) {
  const written = text.trim();
  if (!SAFE_SCHEME.test(written)) return null;
  let url;
  try {
    url = new URL(written);
  } catch {
    return null;
  }
  if (url.protocol === "mailto:") return url.pathname ? url.href : null;
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  return url.hostname ? url.href : null;
}

function anchor(href, children) {
  const a = element("a", children);
  a.setAttribute("href", href);
  a.setAttribute("target", "_blank");
  a.setAttribute("rel", "noopener noreferrer");
  return a;
}

function element(tag, children) {
  const el = document.createElement(tag);
  el.append(...children);
  return el;
}
