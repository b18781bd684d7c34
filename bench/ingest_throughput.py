"""Ingest throughput on this machine, end to end and per stage, on three workloads built at run
time from real text (Debian's manual pages, read from /usr/share/man; never committed):

(a) small text files: each one manual page's first ~1,200 characters as a .txt (2–3 chunks);
(b) one CSV of many rows: `id,page,section,summary` per row, the summary a page's NAME line;
(c) PDFs and DOCX of 10 pages (half each): a page holds ~1,800 characters of manual text;
(r) one-line files (a page's first line), ingested, then ingested again with nothing changed.

    .venv/bin/python bench/ingest_throughput.py [--workloads a,b,c,r] [--files 2000]
        [--rows 200000] [--docs 300] [--reingest-files 2000] [--backend auto|torch|onnx]
        [--reingest]

Each workload is ingested through `ingest_paths` into a fresh home with the bundled embedding
(loaded, and exported to ONNX where the backend asks for it, before the clock starts: load time
is not throughput). Stages are timed by wrapping the functions that do them: walk
(collect_files), hash, parse (the loader, in its worker where there is one), split, embed
(Embedder.embed), store (KnowledgeBase.sync: SQLite, FAISS, keyword index, commit); `other`
is the rest. `--reingest` runs (a) and (r) a second time with nothing changed. The load
average is printed before and after each run, and the CPU seconds the run used: the machine is
shared, and on a loaded machine chunks per CPU-second are the steadier measure (an idle 2-core
machine gives up to twice that in chunks/s, both cores embedding).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAN = Path("/usr/share/man")
_ROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\\(..|\\[-e&|^]|\\\*\(..|\\\*.|\\s[-+]?\d")


def man_texts(limit: int) -> Iterator[tuple[str, str, str]]:
    """(page name, section, plain text) of up to `limit` English manual pages, roff stripped."""
    count = 0
    for section in ("1", "8", "5", "3", "7"):
        for path in sorted((MAN / f"man{section}").glob("*.gz")):
            try:
                raw = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
            except (OSError, EOFError):
                continue
            lines = []
            for line in raw.splitlines():
                if line.startswith((".", "'")):
                    words = line.split(maxsplit=1)
                    if len(words) == 2 and words[0] in (".SH", ".SS", ".B", ".I", ".TP", ".IP"):
                        lines.append(_ROFF_ESCAPE.sub("", words[1]).strip('"'))
                    continue
                lines.append(_ROFF_ESCAPE.sub("", line))
            text = "\n".join(lines).strip()
            if len(text) < 400 or text.startswith(".so"):
                continue
            yield path.name.split(".")[0], section, text
            count += 1
            if count >= limit:
                return


def write_small_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i, (name, section, text) in enumerate(man_texts(count)):
        cut = text[:1200]
        cut = cut[: cut.rfind("\n")] if "\n" in cut[600:] else cut
        (folder / f"{i:05d}-{name}.{section}.txt").write_text(cut)


def write_one_liners(folder: Path, count: int) -> None:
    """`count` files of one line each (a page's first line of text): what a re-ingest of a
    large folder costs does not depend on the files' sizes once nothing is read."""
    folder.mkdir(parents=True)
    for i, (name, section, text) in enumerate(man_texts(count)):
        line = next(ln for ln in text.splitlines() if ln.strip())
        (folder / f"{i:05d}-{name}.{section}.txt").write_text(f"{name}({section}): {line}\n")


def write_csv(folder: Path, rows: int) -> None:
    folder.mkdir(parents=True)
    pages = []
    for name, section, text in man_texts(3000):
        summary = next((ln for ln in text.splitlines() if " - " in ln or "\\-" in ln), "")
        pages.append((name, section, " ".join(summary.replace("\\-", "-").split())[:60]))
    with (folder / "pages.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "page", "section", "summary"])
        for i in range(rows):
            name, section, summary = pages[i % len(pages)]
            writer.writerow([i + 1, name, section, summary])


def write_documents(folder: Path, count: int) -> None:
    from docx import Document
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    folder.mkdir(parents=True)
    source = "\n".join(text for _, _, text in man_texts(4000))
    lines = [ln for ln in source.splitlines() if ln.strip()]
    at = 0
    for i in range(count):
        pages = []
        for _ in range(10):
            page: list[str] = []
            while sum(len(ln) for ln in page) < 1800:
                page.append(lines[at % len(lines)][:95])
                at += 1
            pages.append(page)
        if i % 2 == 0:
            pdf = canvas.Canvas(str(folder / f"doc{i:04d}.pdf"), pagesize=A4)
            for page in pages:
                y = 800
                for line in page:
                    pdf.drawString(40, y, line)
                    y -= 12
                pdf.showPage()
            pdf.save()
        else:
            doc = Document()
            for number, page in enumerate(pages):
                for line in page:
                    doc.add_paragraph(line)
                if number < len(pages) - 1:
                    doc.add_page_break()
            doc.save(str(folder / f"doc{i:04d}.docx"))


class StageTimer:
    """Seconds spent inside each wrapped function (outermost call only, per stage)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attribute: str, stage: str) -> None:
        if not hasattr(owner, attribute):
            return
        original = getattr(owner, attribute)
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - started

        setattr(owner, attribute, timed)
        self._undo.append(lambda: setattr(owner, attribute, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


@contextlib.contextmanager
def stages() -> Iterator[StageTimer]:
    import kbqa.ingest.pipeline as pipeline
    from kbqa.storage.embeddings import Embedder
    from kbqa.storage.kb import KnowledgeBase

    timer = StageTimer()
    timer.wrap(pipeline, "collect_files", "walk")
    timer.wrap(pipeline, "_hash_file", "hash")
    timer.wrap(pipeline, "load_document", "parse")
    with contextlib.suppress(ImportError):
        from kbqa.ingest.isolation import FileParser

        timer.wrap(FileParser, "load", "parse")
    timer.wrap(pipeline, "split_sections", "split")
    timer.wrap(Embedder, "embed", "embed")
    timer.wrap(KnowledgeBase, "sync", "store")
    try:
        yield timer
    finally:
        timer.restore()


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its reaped children (parse workers):
    on a shared machine, chunks per CPU-second say more than chunks per second."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(name: str, folder: Path, home: Path, backend: str) -> dict[str, Any]:
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.settings import EmbeddingSettings, load_settings

    # The setting is absent before it existed (a "before" run on an older tree: torch only).
    known = "backend" in EmbeddingSettings.model_fields
    overrides = {"embedding": {"backend": backend}} if known else {}
    settings = load_settings(home, overrides=overrides)
    before = load_average()
    with stages() as timer:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        report = ingest_paths(settings, "bench", [folder])
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    files = report.added + report.updated + report.unchanged
    row: dict[str, Any] = {
        "workload": name,
        "files": files,
        "failed": len(report.failed),
        "chunks": report.chunks,
        "seconds": round(wall, 1),
        "chunks_per_s": round(report.chunks / wall, 1),
        "files_per_s": round(files / wall, 1),
        "cpu_s": round(cpu, 1),
        "chunks_per_cpu_s": round(report.chunks / cpu, 1) if cpu else 0.0,
        "stages": {k: round(v, 1) for k, v in sorted(timer.seconds.items())},
        "load_before": before,
        "load_after": load_average(),
    }
    row["stages"]["other"] = round(wall - sum(timer.seconds.values()), 1)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="a,b,c")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    parser.add_argument("--reingest", action="store_true", help="(a) again, nothing changed")
    parser.add_argument(
        "--reingest-files", type=int, default=2000, help="one-line files of workload (r)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from kbqa.settings import load_settings
    from kbqa.storage.embeddings import get_embedder

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(json.dumps({"commit": commit, "cpus": os.cpu_count(), "backend": args.backend}))
    with tempfile.TemporaryDirectory(prefix="kbqa-ingest-bench-") as tmp:
        work = Path(tmp)
        settings = load_settings(work / "home-warm")
        embedding = settings.embedding
        # Load (and export) the model before any clock starts; every run below reuses it.
        embedder = get_embedder(
            embedding.model,
            embedding.device,
            embedding.batch_size,
            args.backend,
            settings.cache_dir,
        )
        print(json.dumps({"embedding_backend": embedder.backend}), flush=True)
        makers = {
            "a": (lambda f: write_small_files(f, args.files), f"{args.files} small text files"),
            "b": (lambda f: write_csv(f, args.rows), f"CSV of {args.rows} rows"),
            "c": (lambda f: write_documents(f, args.docs), f"{args.docs} PDF/DOCX of 10 pages"),
            "r": (
                lambda f: write_one_liners(f, args.reingest_files),
                f"{args.reingest_files} one-line files",
            ),
        }
        for key in args.workloads.split(","):
            make, name = makers[key]
            folder = work / f"data-{key}"
            make(folder)
            run(f"({key}) {name}", folder, work / f"home-{key}", args.backend)
            if key in ("a", "r") and args.reingest:
                home = work / f"home-{key}"
                run(f"({key}) re-ingest, nothing changed", folder, home, args.backend)


if __name__ == "__main__":
    main()
