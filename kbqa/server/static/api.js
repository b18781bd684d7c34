// The HTTP API (docs/http-api.md): JSON requests, the /v1/ask event stream and uploads, all with the
// API key as a Bearer token. A 401 asks the user for the key and repeats the request.

import { t } from "./i18n.js";

const KEY_STORAGE = "kbqa.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let promptForKey = async () => null;
let pendingPrompt = null;

/** Install the dialog that asks for the key: async (refused: boolean) => key | null. */
export function setKeyPrompt(prompt) {
  promptForKey = prompt;
}

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** One prompt at a time: requests that get 401 together wait for the same answer. */
async function obtainKey(sentKey) {
  if (storedKey() !== sentKey) return true; // another request already got a new key
  pendingPrompt ??= promptForKey(Boolean(sentKey)).finally(() => {
    pendingPrompt = null;
  });
  const key = await pendingPrompt;
  if (!key) return false;
  sessionStorage.setItem(KEY_STORAGE, key);
  return true;
}

/** fetch() with the key; on 401, ask for a key and try again until given up. */
async function send(path, init = {}) {
  for (;;) {
    const sentKey = storedKey();
    const headers = { ...(init.headers || {}), ...authHeaders() };
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network", t("error.network", { message: error.message }));
    }
    if (response.status !== 401) return response;
    if (!(await obtainKey(sentKey))) throw await toApiError(response, t("key.missing"));
  }
}

/** The ApiError a failed response stands for, from its {"error": {"code", "message"}} body. */
async function toApiError(response, fallback) {
  let code = `http_${response.status}`;
  let message = fallback || `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body?.error?.message) {
      code = body.error.code || code;
      message = body.error.message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message);
}

async function json(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await send(path, init);
  if (!response.ok) throw await toApiError(response);
  return response.json();
}

const enc = encodeURIComponent;

export const api = {
  health: () => json("GET", "/healthz"),
  listKbs: () => json("GET", "/v1/kbs"),
  listModels: () => json("GET", "/v1/models"),
  createKb: (name) => json("POST", "/v1/kbs", { name }),
  deleteKb: (kb) => json("DELETE", `/v1/kbs/${enc(kb)}`),
  listDocuments: (kb) => json("GET", `/v1/kbs/${enc(kb)}/documents`),
  deleteDocument: (kb, docId) => json("DELETE", `/v1/kbs/${enc(kb)}/documents/${enc(docId)}`),
  job: (jobId) => json("GET", `/v1/jobs/${enc(jobId)}`),
  document: (kb, docId) => json("GET", `/v1/kbs/${enc(kb)}/documents/${enc(docId)}`),
};

/** The original file of a document as a Blob (fetched with the key, so it works behind one). */
export async function fetchOriginal(kb, docId) {
  const response = await send(`/v1/kbs/${enc(kb)}/documents/${enc(docId)}/content`);
  if (!response.ok) throw await toApiError(response);
  return response.blob();
}

/**
 * POST /v1/ask with stream: true; calls onEvent for each event ({type: sources|token|done|error}).
 * Resolves after the final event; rejects with ApiError (or AbortError when `signal` fires).
 */
export async function streamAsk(request, signal, onEvent) {
  const response = await send("/v1/ask", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ ...request, stream: true }),
    signal,
  });
  if (!response.ok) throw await toApiError(response);
  let finished = false;
  const parser = new SseParser((data) => {
    const event = JSON.parse(data);
    finished ||= event.type === "done" || event.type === "error";
    onEvent(event);
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.push(value);
  }
  parser.end();
  if (!finished) throw new ApiError(0, "incomplete", t("chat.closed"));
}

/** Server-Sent Events framing: `data:` lines up to a blank line make one event. */
export class SseParser {
  constructor(onData) {
    this.onData = onData;
    this.buffer = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    // A lone "\r" at the very end may be the first half of "\r\n": wait for the next chunk.
    const lines = this.buffer.split(/\r\n|\r(?!$)|\n/);
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  end() {
    if (this.buffer) this.line(this.buffer.replace(/\r$/, ""));
    this.buffer = "";
    this.line("");
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onData(this.data.join("\n"));
      this.data = [];
    } else if (line.startsWith("data:")) {
      this.data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
    }
    // Comments (":…") and other fields (event, id, retry) carry nothing this page needs.
  }
}

/**
 * Upload `files` to `kb` (multipart field "files"); resolves with the job id.
 * XMLHttpRequest rather than fetch: only it reports upload progress, as onProgress(0..1).
 */
export async function uploadFiles(kb, files, onProgress) {
  for (;;) {
    const sentKey = storedKey();
    const { status, body } = await postForm(`/v1/kbs/${enc(kb)}/documents`, files, onProgress);
    if (status === 401 && (await obtainKey(sentKey))) continue;
    if (status >= 200 && status < 300) return body.job_id;
    const error = body?.error ?? {};
    throw new ApiError(status, error.code || `http_${status}`, error.message || `HTTP ${status}`);
  }
}

function postForm(path, files, onProgress) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => resolve({ status: xhr.status, body: xhr.response });
    xhr.onerror = () =>
      reject(new ApiError(0, "network", t("error.network", { message: "upload" })));
    xhr.send(form);
  });
}
