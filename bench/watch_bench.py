"""How soon a saved edit is searchable under `kbqa ingest --watch` (the watch loop in a thread).

    .venv/bin/python bench/watch_bench.py [--edits 20]

A folder of a few text files is synced once, then watched. Each edit rewrites one file with a
new sentence holding a fresh code word (an editor's atomic save: a hidden temporary file renamed
over the original); the latency is from the rename to the moment a keyword-and-dense search of
the KB returns that file for the code word. Edits follow each other only once the previous one
is searchable, so each is measured alone. Prints the median and the worst.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbqa.ingest.pipeline import ingest_paths
from kbqa.ingest.watch import Sync, watch_paths
from kbqa.retrieval import Retriever
from kbqa.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        for i in range(5):
            (folder / f"note{i}.txt").write_text(f"Note {i} about the harbour and its ferries.\n")
        settings = load_settings(Path(tmp) / "home")
        ingest_paths(settings, "bench", [folder])
        retriever = Retriever(settings)
        synced = threading.Condition()
        syncs: list[Sync] = []

        def on_sync(sync: Sync) -> None:
            with synced:
                syncs.append(sync)
                synced.notify_all()

        stop = threading.Event()
        thread = threading.Thread(
            target=watch_paths, args=(settings, "bench", [folder], on_sync), kwargs={"stop": stop}
        )
        thread.start()
        _wait_until_live(folder, syncs, synced)
        latencies = []
        for edit in range(args.edits):
            word = f"zebra{edit:03d}quartz"
            target = folder / f"note{edit % 5}.txt"
            temporary = folder / f".{target.name}.tmp"
            temporary.write_text(f"Edit {edit}: the ferry code word is {word}.\n")
            saved = time.perf_counter()
            os.replace(temporary, target)
            while not _found(retriever, word):
                if time.perf_counter() - saved > 60:
                    raise SystemExit(f"edit {edit} not searchable after 60 s")
                with synced:
                    count = len(syncs)
                    synced.wait_for(lambda: len(syncs) > count, timeout=5)  # noqa: B023
            latencies.append(time.perf_counter() - saved)
        stop.set()
        thread.join()
    print(
        f"{args.edits} edits: median {statistics.median(latencies):.2f} s, "
        f"max {max(latencies):.2f} s, min {min(latencies):.2f} s"
    )


def _found(retriever: Retriever, word: str) -> bool:
    hits = retriever.search(word, ["bench"], 1)
    return bool(hits) and word in hits[0].text


def _wait_until_live(folder: Path, syncs: list[Sync], synced: threading.Condition) -> None:
    """Touch a probe file until a sync shows the watcher is running, then remove it."""
    probe = folder / "probe.txt"
    for i in range(600):
        probe.write_text(f"probe {i}\n")
        with synced:
            if synced.wait_for(lambda: bool(syncs), timeout=0.5):
                break
    count = len(syncs)
    probe.unlink()
    with synced:
        synced.wait_for(lambda: len(syncs) > count, timeout=60)


if __name__ == "__main__":
    main()
