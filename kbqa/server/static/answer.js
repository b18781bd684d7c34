// One question and its answer in the conversation: the question, the sources' file names (shown
// as soon as they arrive; each shows its excerpt with the evidence marked), the answer rendered
// from Markdown as it streams, citation buttons that open the cited passage in the source viewer,
// and a status line (timings, stopped, error).

import { h, uniqueId } from "./dom.js";
import { highlighted } from "./evidence.js";
import { formatNumber, setAttr, setText } from "./i18n.js";
import { renderMarkdown } from "./markdown.js";
import { openViewer } from "./viewer.js";

export class AnswerView {
  /** `kbs`: the knowledge bases asked, where the viewer looks the cited documents up. */
  constructor(question, kbs) {
    this.id = uniqueId("turn");
    this.kbs = kbs;
    this.text = "";
    this.sources = new Map(); // index → source
    this.excerpts = new Map(); // index → excerpt element
    this.frame = 0;
    this.sourceList = h("ul", { class: "source-list" });
    this.sourceBox = h(
      "div",
      { class: "sources", hidden: true },
      setText(h("span", { class: "sources-label" }), "chat.sources"),
      this.sourceList,
    );
    this.body = h("div", { class: "answer-body", "aria-busy": "true" });
    this.mode = h("div", { class: "answer-mode", hidden: true });
    this.excerptBox = h("div", { class: "excerpts" });
    this.note = h("p", { class: "note" });
    this.element = h(
      "article",
      { class: "turn", id: this.id },
      h(
        "div",
        { class: "question" },
        setText(h("span", { class: "visually-hidden" }), "chat.you"),
        h("p", {}, question),
      ),
      h(
        "div",
        { class: "answer" },
        setText(h("span", { class: "visually-hidden" }), "chat.assistant"),
        this.sourceBox,
        this.body,
        this.mode,
        this.excerptBox,
        this.note,
      ),
    );
  }

  setSources(sources) {
    const open = [...this.excerpts].filter(([, excerpt]) => !excerpt.hidden).map(([n]) => n);
    this.sources = new Map(sources.map((s) => [s.index, s]));
    this.sourceList.replaceChildren(
      ...sources.map((s) => h("li", {}, this.sourceButton(s.index, `[${s.index}] ${s.source}`))),
    );
    this.sourceBox.hidden = sources.length === 0;
    this.excerptBox.replaceChildren(...sources.map((s) => this.excerpt(s)));
    for (const n of open) this.toggle(n, true);
    this.render();
  }

  appendToken(text) {
    this.text += text;
    // Many tokens arrive per frame: render once per frame, not once per token.
    this.frame ||= requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  /**
   * The final answer replaces what was streamed (the server's text is authoritative: it may be
   * an extract of the sources that replaced an unsupported generated answer); the sources come
   * again with their evidence.
   */
  finish({ answer, refused, timings, sources, answer_mode: mode, generated }) {
    if (Array.isArray(sources)) this.setSources(sources);
    if (typeof answer === "string") this.text = answer;
    this.showMode(mode, generated);
    this.render();
    this.settle();
    if (refused) this.element.classList.add("refused");
    if (refused && !this.text.trim()) setText(this.note, "chat.refused");
    else this.showTimings(timings);
  }

  fail(key, args) {
    this.render();
    this.settle();
    this.element.classList.add("failed");
    setText(this.note, key, args);
  }

  settle() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.body.setAttribute("aria-busy", "false");
  }

  /** An extracted answer (quoted from the sources, and saying so itself) keeps the model's
   * dropped text folded away under it. */
  showMode(mode, generated) {
    this.mode.hidden = mode !== "extracted" || !generated?.trim();
    if (this.mode.hidden) return;
    this.mode.replaceChildren(
      h(
        "details",
        { class: "generated" },
        setText(h("summary"), "answer.generated"),
        h("p", {}, generated),
      ),
    );
  }

  render() {
    this.body.replaceChildren(renderMarkdown(this.text, (n) => this.citation(n)));
  }

  showTimings(timings) {
    const total = timings?.total_ms;
    const rate = timings?.tokens_per_s;
    if (typeof total !== "number" || typeof rate !== "number") return;
    setText(this.note, "chat.timings", {
      seconds: formatNumber(total / 1000, 1),
      rate: formatNumber(rate, 1),
    });
  }

  /** Citation [n]: opens source n's document in the viewer, at the cited passage. */
  citation(n) {
    const source = this.sources.get(n);
    if (!source) return null;
    const button = h(
      "button",
      {
        type: "button",
        class: "cite",
        "aria-haspopup": "dialog",
        dataset: { cite: String(n) },
        onclick: () => this.view(n),
      },
      `[${n}]`,
    );
    setAttr(button, "aria-label", "chat.citation", { n, file: source.source });
    return button;
  }

  view(n) {
    const source = this.sources.get(n);
    if (source) openViewer(source.kb ? [source.kb] : this.kbs, source);
  }

  /** A button that shows or hides the excerpt of source n (all such buttons stay in step). */
  sourceButton(n, label) {
    const expanded = this.excerpts.get(n)?.hidden === false;
    return h(
      "button",
      {
        type: "button",
        class: "source-toggle",
        "aria-expanded": String(expanded),
        "aria-controls": `${this.id}-source-${n}`,
        dataset: { source: String(n) },
        onclick: () => this.toggle(n),
      },
      label,
    );
  }

  toggle(n, open) {
    const excerpt = this.excerpts.get(n);
    if (!excerpt) return;
    excerpt.hidden = open === undefined ? !excerpt.hidden : !open;
    for (const button of this.element.querySelectorAll(`button[data-source="${n}"]`)) {
      button.setAttribute("aria-expanded", String(!excerpt.hidden));
    }
    if (!excerpt.hidden) excerpt.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  excerpt(source) {
    const details = [
      source.page != null ? setText(h("span"), "source.page", { page: source.page }) : null,
      source.heading ? h("span", { class: "excerpt-heading" }, source.heading) : null,
      typeof source.score === "number"
        ? setText(h("span"), "source.score", { score: formatNumber(source.score, 2) })
        : null,
    ];
    const close = setText(
      h("button", { type: "button", class: "link", onclick: () => this.toggle(source.index) }),
      "source.close",
    );
    const open = setText(
      h("button", {
        type: "button",
        class: "link open-viewer",
        "aria-haspopup": "dialog",
        onclick: () => this.view(source.index),
      }),
      "source.open",
    );
    const excerpt = h(
      "section",
      { class: "excerpt", id: `${this.id}-source-${source.index}`, hidden: true },
      h(
        "header",
        {},
        h("strong", { class: "excerpt-file" }, `[${source.index}] ${source.source}`),
        h("span", { class: "excerpt-meta" }, details),
        open,
        close,
      ),
      h("p", { class: "excerpt-text" }, highlighted(source.text ?? "", source.evidence)),
    );
    setAttr(excerpt, "aria-label", "chat.citation", { n: source.index, file: source.source });
    this.excerpts.set(source.index, excerpt);
    return excerpt;
  }
}
