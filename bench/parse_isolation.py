"""What parsing in worker processes costs (kbqa.ingest.isolation): the same small files loaded in
the calling process and through a warm worker, and what starting a worker costs.

    python bench/parse_isolation.py [--files 300]

Prints one JSON object: per format, files/s in-process and through the worker and the added
milliseconds a file; the first worker's start (which starts the fork server) and a further
worker's. The files are written here, a few hundred bytes to a few KB each, so the numbers are
the overhead on the common case (many small files), not parsing itself.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import docx

from kbqa.ingest.isolation import FileParser, WorkerPool
from kbqa.ingest.loaders import load_document
from kbqa.ingest.types import LoadOptions

MAX_BYTES = 50 * 2**20


def _docx(number: int) -> bytes:
    document = docx.Document()
    document.add_heading(f"Widget {number}", level=1)
    document.add_paragraph(f"Widget {number} weighs {number * 3} grams and is painted teal. " * 5)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _write(folder: Path, files: int) -> dict[str, list[Path]]:
    makers = {
        ".json": lambda n: json.dumps({"id": n, "text": f"record {n} " * 20}).encode(),
        ".csv": lambda n: ("name,weight\n" + f"w{n},{n}\n" * 30).encode(),
        ".html": lambda n: f"<h1>Page {n}</h1><p>{'Some text. ' * 40}</p>".encode(),
        ".docx": _docx,
        ".md": lambda n: f"# Note {n}\n\n{'Some text. ' * 40}\n".encode(),
    }
    written: dict[str, list[Path]] = {}
    for suffix, make in makers.items():
        written[suffix] = []
        for number in range(files):
            path = folder / f"f{number}{suffix}"
            path.write_bytes(make(number))
            written[suffix].append(path)
    return written


def _rate(load: object, paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        load(path, max_bytes=MAX_BYTES, options=LoadOptions())  # type: ignore[operator]
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="files of each format")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        written = _write(Path(tmp), args.files)
        started = time.perf_counter()
        pool = WorkerPool(memory_mb=2048)
        files = FileParser(pool, timeout_s=300)
        files.load(written[".json"][0], max_bytes=MAX_BYTES, options=LoadOptions())
        first_start = time.perf_counter() - started
        with WorkerPool(memory_mb=2048) as other:
            started = time.perf_counter()
            other.parse(
                written[".json"][0], max_bytes=MAX_BYTES, options=LoadOptions(), timeout_s=60
            )
            next_start = time.perf_counter() - started
        formats = {}
        for suffix, paths in written.items():
            here = _rate(load_document, paths)
            worker = _rate(files.load, paths)
            formats[suffix] = {
                "in_process_files_per_s": round(here, 1),
                "via_parser_files_per_s": round(worker, 1),
                "added_ms_per_file": round(1000 / worker - 1000 / here, 2),
            }
        pool.close()
    print(
        json.dumps(
            {
                "files_per_format": args.files,
                "first_worker_start_s": round(first_start, 2),
                "next_worker_start_s": round(next_start, 2),
                "formats": formats,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
