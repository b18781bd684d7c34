"""`kbqa ingest PATH --watch`: after the first sync, one line (or JSON object) per later sync."""

from __future__ import annotations

import time
from pathlib import Path

from kbqa.cli.common import EXIT_OK, EXIT_PARTIAL, print_json, stderr, stdout
from kbqa.ingest.watch import Sync, WatchedFolderGone, watch_paths
from kbqa.settings import Settings


def follow(settings: Settings, kb: str, paths: list[Path], *, json_out: bool) -> int:
    """Watch until Ctrl-C (exit 0) or a watched folder disappears (exit 1)."""
    if not json_out:
        shown = ", ".join(str(p) for p in paths)
        stderr.print(f"watching {shown} (Ctrl-C to stop)", markup=False, highlight=False)

    def report(sync: Sync) -> None:
        if json_out:
            if sync.report is not None:
                print_json(sync.report.to_json())
            else:
                print_json({"kb": kb, "error": sync.error})
            return
        stdout.print(_line(sync), markup=False, highlight=False)

    try:
        watch_paths(settings, kb, paths, report)
    except KeyboardInterrupt:
        return EXIT_OK
    except WatchedFolderGone as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        return EXIT_PARTIAL
    return EXIT_OK


def _line(sync: Sync) -> str:
    clock = time.strftime("%H:%M:%S")
    changes = f"{sync.changes} change{'s' if sync.changes != 1 else ''}"
    if sync.report is None:
        return f"{clock} sync after {changes} refused: {sync.error}"
    r = sync.report
    failed = f", {len(r.failed)} failed" if r.failed else ""
    return (
        f"{clock} sync after {changes}: {r.added} added, {r.updated} updated, "
        f"{r.removed} removed{failed}, {r.chunks} chunks in {r.seconds:.1f} s"
        + "".join(f"\n  failed {item['path']}: {item['error']}" for item in r.failed)
    )
