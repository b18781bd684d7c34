// The chat view: pick knowledge bases, ask, watch the answer stream in; Stop and Clear.
// Finished turns are kept in sessionStorage (they survive a reload of the tab) and sent back as
// `history`.

import { streamAsk } from "./api.js";
import { AnswerView } from "./answer.js";
import { byId, h } from "./dom.js";
import { setText } from "./i18n.js";
import { onKbs } from "./store.js";

const TURNS_STORAGE = "kbqa.turns";
const SELECTION_STORAGE = "kbqa.selectedKbs";
const MAX_HISTORY_TURNS = 100; // the server refuses longer histories

export class ChatView {
  constructor() {
    this.form = byId("ask-form");
    this.question = byId("question");
    this.log = byId("conversation");
    this.choices = byId("kb-choices");
    this.sendButton = byId("send");
    this.stopButton = byId("stop");
    this.status = byId("chat-status");
    this.turns = readJson(TURNS_STORAGE, []);
    this.selected = readJson(SELECTION_STORAGE, null);
    this.controller = null;

    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.ask();
    });
    this.question.addEventListener("keydown", (e) => this.onKey(e));
    this.stopButton.addEventListener("click", () => this.controller?.abort());
    byId("clear").addEventListener("click", () => this.clear());
    this.choices.addEventListener("change", () => this.saveSelection());
    onKbs((kbs) => this.showKbs(kbs));
    this.restore();
  }

  onKey(event) {
    // Enter sends; Shift+Enter is a new line; Enter that confirms an IME candidate (Chinese
    // input methods) is left to the IME.
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) {
      return;
    }
    event.preventDefault();
    this.form.requestSubmit();
  }

  showKbs(kbs) {
    const names = kbs.map((kb) => kb.name);
    let chosen = (this.selected ?? []).filter((name) => names.includes(name));
    if (chosen.length === 0 && names.length) {
      chosen = [names.includes("default") ? "default" : names[0]];
    }
    this.choices.replaceChildren(
      ...names.map((name) =>
        h(
          "label",
          { class: "kb-choice" },
          h("input", { type: "checkbox", name: "kb", value: name, checked: chosen.includes(name) }),
          h("span", {}, name),
        ),
      ),
    );
    if (!names.length) this.choices.append(setText(h("p", { class: "hint" }), "chat.noKbs"));
    this.saveSelection();
  }

  saveSelection() {
    const boxes = this.choices.querySelectorAll("input[name=kb]:checked");
    this.selected = [...boxes].map((box) => box.value);
    sessionStorage.setItem(SELECTION_STORAGE, JSON.stringify(this.selected));
  }

  async ask() {
    const question = this.question.value.trim();
    if (!question || this.controller) return;
    if (!this.selected?.length) {
      setText(this.status, "chat.pickKb");
      return;
    }
    this.status.textContent = "";
    const view = this.startTurn(question, this.selected);
    const history = this.turns.slice(-MAX_HISTORY_TURNS).map((t) => [t.question, t.answer]);
    const request = { question, kb: this.selected, history };
    this.setBusy(new AbortController());
    try {
      await streamAsk(request, this.controller.signal, (event) => this.onEvent(view, event));
      if (view.result) this.remember(question, view);
    } catch (error) {
      if (error.name === "AbortError") view.fail("chat.stopped");
      else view.fail("chat.failed", { message: error.message });
    } finally {
      this.setBusy(null);
      this.question.focus();
    }
  }

  startTurn(question, kbs) {
    this.question.value = "";
    byId("chat-empty").hidden = true;
    const view = new AnswerView(question, kbs);
    setText(view.note, "chat.thinking");
    this.log.append(view.element);
    view.element.scrollIntoView({ block: "end" });
    return view;
  }

  onEvent(view, event) {
    const follow = this.atBottom();
    if (event.type === "sources") view.setSources(event.sources ?? []);
    else if (event.type === "token") view.appendToken(event.text ?? "");
    else if (event.type === "done") {
      view.result = event;
      view.finish(event);
    } else if (event.type === "error") view.fail("chat.failed", { message: event.message });
    if (follow) requestAnimationFrame(() => this.scrollToEnd());
  }

  remember(question, view) {
    const { answer, refused, answer_mode: mode, generated } = view.result;
    const sources = [...view.sources.values()];
    this.turns.push({
      question,
      answer: answer ?? view.text,
      refused: Boolean(refused),
      sources,
      kbs: view.kbs,
      answer_mode: mode ?? null,
      generated: generated ?? null,
    });
    this.turns = this.turns.slice(-MAX_HISTORY_TURNS);
    writeJson(TURNS_STORAGE, this.turns);
  }

  setBusy(controller) {
    this.controller = controller;
    this.sendButton.disabled = Boolean(controller);
    this.stopButton.disabled = !controller;
    this.log.setAttribute("aria-busy", String(Boolean(controller)));
  }

  clear() {
    this.controller?.abort();
    this.turns = [];
    sessionStorage.removeItem(TURNS_STORAGE);
    for (const turn of this.log.querySelectorAll(".turn")) turn.remove();
    byId("chat-empty").hidden = false;
    setText(this.status, "chat.cleared");
    this.question.focus();
  }

  /** Show the turns kept from earlier in this tab's session. */
  restore() {
    for (const turn of this.turns) {
      const view = new AnswerView(turn.question, turn.kbs ?? this.selected ?? []);
      view.finish({ ...turn, sources: turn.sources ?? [] });
      this.log.append(view.element);
    }
    byId("chat-empty").hidden = this.turns.length > 0;
  }

  atBottom() {
    const scroller = this.log;
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }
}

function readJson(key, fallback) {
  try {
    return JSON.parse(sessionStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function writeJson(key, value) {
  try {
    sessionStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full: the conversation still works, it just won't survive a reload.
  }
}
