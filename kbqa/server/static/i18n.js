// Interface text in English and Chinese. Elements carry their message key in data-i18n (and
// data-i18n-args for parameters), so switching language re-translates the page in place,
// including content rendered earlier.

const MESSAGES = {
  en: {
    "skip": "Skip to content",
    "nav.label": "Views",
    "nav.chat": "Chat",
    "nav.manage": "Manage",
    "lang.switch": "Switch the interface to Chinese",
    "chat.kbs": "Knowledge bases",
    "chat.model": "Model",
    "chat.noKbs": "No knowledge bases yet. Create one under Manage.",
    "chat.conversation": "Conversation",
    "chat.empty": "Ask a question about your documents. Answers cite their sources as [1], [2]…",
    "chat.question": "Question",
    "chat.placeholder": "Ask a question (Enter to send, Shift+Enter for a new line)",
    "chat.send": "Send",
    "chat.stop": "Stop",
    "chat.clear": "Clear",
    "chat.you": "You",
    "chat.assistant": "kbqa",
    "chat.sources": "Sources",
    "chat.noSources": "No sources",
    "chat.pickKb": "Pick at least one knowledge base.",
    "chat.thinking": "Searching and answering…",
    "chat.stopped": "Stopped.",
    "chat.refused": "The knowledge base holds no answer to this.",
    "chat.cleared": "Conversation cleared.",
    "chat.timings": "{seconds} s · {rate} tokens/s",
    "chat.failed": "Failed: {message}",
    "chat.closed": "the connection closed before the answer was complete",
    "chat.citation": "Source {n}: {file}",
    "source.page": "page {page}",
    "source.score": "relevance {score}",
    "source.close": "Hide",
    "source.open": "Open in document",
    "evidence.answer": "Supports the answer",
    "evidence.question": "Matches the question (the answer had no support here)",
    "answer.generated": "The model's own answer (not used)",
    "viewer.close": "Close",
    "viewer.open": "Open original",
    "viewer.download": "Download",
    "viewer.text": "Document text",
    "viewer.loading": "Loading the document…",
    "viewer.failed": "Could not open the document: {message}",
    "viewer.meta": "{chunks} {chunks:chunk|chunks} · {size}",
    "viewer.page": "Page {page}",
    "viewer.unavailable":
      "The original file is no longer on the server; this is the text that was ingested.",
    "viewer.modified":
      "The file changed after it was ingested; this is the text that was ingested.",
    "viewer.citedMissing": "The cited passage is no longer in this document.",
    "manage.kbs": "Knowledge bases",
    "manage.newKb": "New knowledge base",
    "manage.create": "Create",
    "manage.nameHint": "1–64 letters, digits, _ - . (not starting with .)",
    "manage.nameEmpty": "Enter a name.",
    "manage.nameLong": "At most 64 characters.",
    "manage.nameDot": "A name must not start with a dot.",
    "manage.nameChars": "Only letters, digits, _ - . are allowed (found {chars}).",
    "manage.creating": "Creating {name}…",
    "manage.created": "Created {name}.",
    "manage.kbSummary":
      "{documents} {documents:document|documents} · {chunks} {chunks:chunk|chunks}",
    "manage.kbDamaged": "damaged: {error}",
    "manage.noKbs": "No knowledge bases yet.",
    "manage.deleteKb": "Delete knowledge base {name}",
    "manage.docs": "Documents",
    "manage.docsIn": "Documents in {name}",
    "manage.pickKbFirst": "Create or pick a knowledge base first.",
    "manage.noDocs": "No documents yet. Upload some.",
    "manage.chunks": "{chunks} {chunks:chunk|chunks}",
    "manage.deleteDoc": "Delete {name}",
    "manage.view": "View",
    "manage.viewDoc": "View {name}",
    "manage.delete": "Delete",
    "manage.drop": "Drop files here, or",
    "manage.choose": "Choose files",
    "manage.formats": "Supported: {formats}",
    "manage.uploading": "Uploading {count} {count:file|files}… {percent}%",
    "manage.queued": "Waiting to be ingested…",
    "manage.ingesting": "Ingesting: {done} of {total} files, {chunks} {chunks:chunk|chunks}",
    "manage.ingested":
      "Done: {added} added, {updated} updated, {unchanged} unchanged, " +
      "{chunks} {chunks:chunk|chunks}.",
    "manage.jobFailed": "Ingestion failed: {message}",
    "manage.unsupported": "{name}: unsupported file type (not uploaded)",
    "manage.progress": "Upload progress",
    "manage.dismiss": "Dismiss",
    "confirm.title": "Please confirm",
    "confirm.cancel": "Cancel",
    "confirm.deleteDoc": "Delete the document “{name}” from {kb}? Its chunks are removed.",
    "confirm.deleteKb":
      "Delete the knowledge base “{name}” with all its documents? This cannot be undone.",
    "key.title": "API key required",
    "key.explain": "This server needs an API key. It is kept for this browser tab only.",
    "key.label": "API key",
    "key.refused": "That key was refused. Try again.",
    "key.save": "Continue",
    "key.missing": "an API key is needed",
    "error.network": "cannot reach the server ({message})",
  },
  zh: {
    "skip": "跳到正文",
    "nav.label": "视图",
    "nav.chat": "问答",
    "nav.manage": "知识库管理",
    "lang.switch": "将界面切换为英文",
    "chat.kbs": "知识库",
    "chat.model": "模型",
    "chat.noKbs": "还没有知识库。请到“知识库管理”中新建。",
    "chat.conversation": "对话",
    "chat.empty": "就你的文档提问。回答会以 [1]、[2]… 标注出处。",
    "chat.question": "问题",
    "chat.placeholder": "输入问题（Enter 发送，Shift+Enter 换行）",
    "chat.send": "发送",
    "chat.stop": "停止",
    "chat.clear": "清空",
    "chat.you": "你",
    "chat.assistant": "kbqa",
    "chat.sources": "出处",
    "chat.noSources": "无出处",
    "chat.pickKb": "请至少选择一个知识库。",
    "chat.thinking": "正在检索并作答…",
    "chat.stopped": "已停止。",
    "chat.refused": "知识库中没有这个问题的答案。",
    "chat.cleared": "对话已清空。",
    "chat.timings": "{seconds} 秒 · 每秒 {rate} 个词元",
    "chat.failed": "出错：{message}",
    "chat.closed": "回答完成前连接已断开",
    "chat.citation": "出处 {n}：{file}",
    "source.page": "第 {page} 页",
    "source.score": "相关度 {score}",
    "source.close": "收起",
    "source.open": "在文档中查看",
    "evidence.answer": "支持回答的原文",
    "evidence.question": "与问题相关的原文（回答在此没有依据）",
    "answer.generated": "模型自己的回答（未采用）",
    "viewer.close": "关闭",
    "viewer.open": "打开原文件",
    "viewer.download": "下载",
    "viewer.text": "文档内容",
    "viewer.loading": "正在载入文档…",
    "viewer.failed": "无法打开文档：{message}",
    "viewer.meta": "{chunks} 个分块 · {size}",
    "viewer.page": "第 {page} 页",
    "viewer.unavailable": "服务器上已没有原文件；以下是入库时提取的文本。",
    "viewer.modified": "文件在入库后有改动；以下是入库时提取的文本。",
    "viewer.citedMissing": "所引用的段落已不在此文档中。",
    "manage.kbs": "知识库",
    "manage.newKb": "新建知识库",
    "manage.create": "新建",
    "manage.nameHint": "1–64 个字母、数字或 _ - .（不能以 . 开头）",
    "manage.nameEmpty": "请输入名称。",
    "manage.nameLong": "最多 64 个字符。",
    "manage.nameDot": "名称不能以 . 开头。",
    "manage.nameChars": "只能包含字母、数字和 _ - .（发现 {chars}）。",
    "manage.creating": "正在新建 {name}…",
    "manage.created": "已新建 {name}。",
    "manage.kbSummary": "{documents} 个文档 · {chunks} 个分块",
    "manage.kbDamaged": "已损坏：{error}",
    "manage.noKbs": "还没有知识库。",
    "manage.deleteKb": "删除知识库 {name}",
    "manage.docs": "文档",
    "manage.docsIn": "{name} 中的文档",
    "manage.pickKbFirst": "请先新建或选择一个知识库。",
    "manage.noDocs": "还没有文档，请上传。",
    "manage.chunks": "{chunks} 个分块",
    "manage.deleteDoc": "删除 {name}",
    "manage.view": "查看",
    "manage.viewDoc": "查看 {name}",
    "manage.delete": "删除",
    "manage.drop": "把文件拖到这里，或",
    "manage.choose": "选择文件",
    "manage.formats": "支持的格式：{formats}",
    "manage.uploading": "正在上传 {count} 个文件… {percent}%",
    "manage.queued": "等待入库…",
    "manage.ingesting": "正在入库：{done}/{total} 个文件，{chunks} 个分块",
    "manage.ingested": "完成：新增 {added}，更新 {updated}，未变 {unchanged}，共 {chunks} 个分块。",
    "manage.jobFailed": "入库失败：{message}",
    "manage.unsupported": "{name}：不支持的文件类型（未上传）",
    "manage.progress": "上传进度",
    "manage.dismiss": "关闭",
    "confirm.title": "请确认",
    "confirm.cancel": "取消",
    "confirm.deleteDoc": "从 {kb} 中删除文档“{name}”？它的分块将被移除。",
    "confirm.deleteKb": "删除知识库“{name}”及其全部文档？此操作无法撤销。",
    "key.title": "需要 API 密钥",
    "key.explain": "此服务器需要 API 密钥。密钥只保存在当前浏览器标签页中。",
    "key.label": "API 密钥",
    "key.refused": "密钥被拒绝，请重试。",
    "key.save": "继续",
    "key.missing": "需要 API 密钥",
    "error.network": "无法连接服务器（{message}）",
  },
};

const LANG_STORAGE = "kbqa.lang";
let current = initialLanguage();

function initialLanguage() {
  const saved = localStorage.getItem(LANG_STORAGE);
  if (saved in MESSAGES) return saved;
  const preferred = navigator.languages?.length ? navigator.languages : [navigator.language];
  return preferred.some((tag) => /^zh\b/i.test(tag || "")) ? "zh" : "en";
}

export function language() {
  return current;
}

/**
 * The message `key` in the current language, with {name} placeholders filled from `args`;
 * {name:one|other} picks a word by whether args[name] is 1 (English plurals).
 */
export function t(key, args = {}) {
  const template = MESSAGES[current][key] ?? MESSAGES.en[key] ?? key;
  return template.replace(/\{(\w+)(?::([^|}]*)\|([^}]*))?\}/g, (whole, name, one, other) => {
    if (!(name in args)) return whole;
    if (one === undefined) return String(args[name]);
    return Number(args[name]) === 1 ? one : other;
  });
}

/** Give `el` the text of `key` now and after every language switch. */
export function setText(el, key, args) {
  el.dataset.i18n = key;
  if (args) el.dataset.i18nArgs = JSON.stringify(args);
  else delete el.dataset.i18nArgs;
  el.textContent = t(key, args);
  return el;
}

/** Same as setText for an attribute (aria-label, placeholder, title). */
export function setAttr(el, attribute, key, args) {
  el.setAttribute(`data-i18n-${attribute}`, key);
  if (args) el.setAttribute(`data-i18n-${attribute}-args`, JSON.stringify(args));
  else el.removeAttribute(`data-i18n-${attribute}-args`);
  el.setAttribute(attribute, t(key, args));
  return el;
}

const TRANSLATED_ATTRIBUTES = ["aria-label", "placeholder", "title"];

/** Translate every marked element under `root`. */
export function translate(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n, parseArgs(el.dataset.i18nArgs));
  }
  for (const attribute of TRANSLATED_ATTRIBUTES) {
    for (const el of root.querySelectorAll(`[data-i18n-${attribute}]`)) {
      const args = parseArgs(el.getAttribute(`data-i18n-${attribute}-args`));
      el.setAttribute(attribute, t(el.getAttribute(`data-i18n-${attribute}`), args));
    }
  }
}

function parseArgs(json) {
  return json ? JSON.parse(json) : undefined;
}

export function setLanguage(lang) {
  if (!(lang in MESSAGES)) return;
  current = lang;
  localStorage.setItem(LANG_STORAGE, lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  translate();
  document.dispatchEvent(new CustomEvent("kbqa:language", { detail: lang }));
}

/** Format a number for the current language (1,234.5 / 1,234.5). */
export function formatNumber(value, digits = 0) {
  const locale = current === "zh" ? "zh-CN" : "en";
  return value.toLocaleString(locale, { maximumFractionDigits: digits });
}
