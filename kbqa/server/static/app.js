// Entry point: language, tabs, the API key prompt, then the two views.

import { api, setKeyPrompt } from "./api.js";
import { ChatView } from "./chat.js";
import { promptApiKey } from "./dialogs.js";
import { byId } from "./dom.js";
import { language, setLanguage } from "./i18n.js";
import { ManageView } from "./manage.js";
import { onKbs, reloadKbs } from "./store.js";

const VIEWS = ["chat", "manage"];

function showView(name, { focus = false } = {}) {
  for (const view of VIEWS) {
    const tab = byId(`tab-${view}`);
    const selected = view === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    byId(`view-${view}`).hidden = !selected;
    if (selected && focus) tab.focus();
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

/** Tabs per the ARIA practices: click, or arrow keys / Home / End to move between them. */
function bindTabs() {
  const tabs = VIEWS.map((view) => byId(`tab-${view}`));
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => showView(VIEWS[i]));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 };
      if (!(event.key in moves)) return;
      event.preventDefault();
      const next = (moves[event.key] + tabs.length) % tabs.length;
      showView(VIEWS[next], { focus: true });
    });
  });
  const fromHash = location.hash.slice(1);
  showView(VIEWS.includes(fromHash) ? fromHash : "chat");
}

function bindLanguage() {
  const toggle = byId("lang-toggle");
  const label = () => {
    // The button names the language it switches to, in that language.
    const other = language() === "zh" ? "en" : "zh";
    toggle.textContent = other === "zh" ? "中文" : "English";
    toggle.lang = other === "zh" ? "zh-CN" : "en";
  };
  toggle.addEventListener("click", () => {
    setLanguage(language() === "zh" ? "en" : "zh");
    label();
  });
  setLanguage(language());
  label();
}

/** The models that answer here: GET /v1/models without the KB names (`kbqa`, `kbqa/<kb>`),
 * that is the backend's own model, e.g. a P-tuned `chatglm2-6b-pt-<checkpoint>`. */
async function showModels() {
  const { data } = await api.listModels();
  const names = data.map((model) => model.id);
  const own = names.filter((name) => name !== "kbqa" && !name.startsWith("kbqa/"));
  byId("model-list").textContent = own.join(", ");
}

async function start() {
  bindLanguage();
  bindTabs();
  setKeyPrompt(promptApiKey);
  new ChatView();
  new ManageView();
  onKbs(() => {
    byId("app-error").textContent = ""; // the server answers again (e.g. the key was given)
  });
  try {
    await reloadKbs();
    await showModels();
  } catch (error) {
    byId("app-error").textContent = error.message;
  }
}

start();
