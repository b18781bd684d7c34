// One upload on the manage view: the files sent, a progress bar through upload and ingestion,
// then the ingest result with each file that failed or was skipped and why.

import { api, uploadFiles } from "./api.js";
import { h } from "./dom.js";
import { setAttr, setText } from "./i18n.js";

// The server's loaders (ingest/loaders): other files are refused before anything is sent.
// The server lists what it reads in GET /healthz (`formats`: the `unstructured` extra adds
// some); until it has answered, the core loaders', which tests/web/test_upload_types.py keeps
// equal to kbqa.ingest.loaders.SUPPORTED_EXTENSIONS without the long tail.
export const SUPPORTED_EXTENSIONS = [
  ".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".pptx", ".csv", ".xlsx", ".json",
  ".jsonl", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp",
];

const POLL_MS = 400;

let supported = [...SUPPORTED_EXTENSIONS];

/** The extensions the server reads, as GET /healthz listed them. */
export function setSupported(formats) {
  supported = [...formats];
}

export function supportedExtensions() {
  return supported;
}

export function isSupported(file) {
  const dot = file.name.lastIndexOf(".");
  return dot > 0 && supported.includes(file.name.slice(dot).toLowerCase());
}

export class UploadCard {
  constructor(kb, files) {
    this.kb = kb;
    this.files = files.filter(isSupported);
    this.progress = h("progress", { max: "1" });
    setAttr(this.progress, "aria-label", "manage.progress");
    this.status = h("p", { class: "upload-status" });
    this.problems = h("ul", { class: "upload-problems" });
    for (const file of files.filter((f) => !isSupported(f))) {
      this.problems.append(setText(h("li"), "manage.unsupported", { name: file.name }));
    }
    const dismiss = setText(
      h("button", { type: "button", class: "link", onclick: () => this.element.remove() }),
      "manage.dismiss",
    );
    this.element = h(
      "li",
      { class: "upload" },
      h("p", { class: "upload-files" }, files.map((f) => f.name).join(", ")),
      this.progress,
      this.status,
      this.problems,
      dismiss,
    );
  }

  /** Upload, then follow the ingest job to its end; resolves when there is nothing more to do. */
  async run() {
    if (!this.files.length) return this.end();
    try {
      const jobId = await uploadFiles(this.kb, this.files, (fraction) => this.uploading(fraction));
      this.showJob(await this.follow(jobId));
    } catch (error) {
      setText(this.status, "manage.jobFailed", { message: error.message });
      this.element.classList.add("failed");
    }
    return this.end();
  }

  uploading(fraction) {
    this.progress.value = fraction;
    const percent = Math.round(fraction * 100);
    setText(this.status, "manage.uploading", { count: this.files.length, percent });
  }

  async follow(jobId) {
    for (;;) {
      const job = await api.job(jobId);
      if (job.state === "done" || job.state === "failed") return job;
      this.showProgress(job);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  showProgress(job) {
    const { files_total: total, files_done: done, chunks } = job.progress ?? {};
    if (job.state === "queued" || !total) {
      this.progress.removeAttribute("value"); // indeterminate
      setText(this.status, "manage.queued");
      return;
    }
    this.progress.value = done / total;
    setText(this.status, "manage.ingesting", { done, total, chunks });
  }

  showJob(job) {
    if (job.state === "failed" || !job.result) {
      this.element.classList.add("failed");
      setText(this.status, "manage.jobFailed", { message: job.error ?? job.state });
      return;
    }
    const result = job.result;
    const { added, updated, unchanged, chunks } = result;
    setText(this.status, "manage.ingested", { added, updated, unchanged, chunks });
    const items = [
      ...(result.failed ?? []).map((f) => `${baseName(f.path)}: ${f.error}`),
      ...(result.skipped ?? []).map((s) => `${baseName(s.path)}: ${s.reason}`),
    ];
    this.problems.append(...items.map((text) => h("li", {}, text)));
    if (items.length) this.element.classList.add("partial");
  }

  end() {
    this.progress.value = 1;
    this.element.classList.add("finished");
  }
}

function baseName(path) {
  return String(path).split(/[\\/]/).pop();
}
