"""A loader plugin for the tests (`ingest.loader_plugins = ["stuck_loader"]`): a JSON file
holding exactly hostile_files.STUCK_JSON makes its parser wait forever, as a parser stuck in
a loop would, one holding CRASH_JSON kills its process, as a crash in C code would, and one
made by hostile_files.held_json waits until its release file exists; any other JSON file
(a held one too, once released) is read by the real JSON loader.

It is imported like any user's plugin, by the ingesting process and by each parse worker.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from hostile_files import CRASH_JSON, STUCK_JSON
from waiting import wait_for

from kbqa.ingest.loaders import register_loader
from kbqa.ingest.loaders.jsondoc import load_json
from kbqa.ingest.types import LoadOptions, Section


def _load(data: bytes, options: LoadOptions) -> list[Section]:
    if data == STUCK_JSON:
        threading.Event().wait()  # forever: only killing the worker ends it
    if data == CRASH_JSON:
        os.kill(os.getpid(), signal.SIGSEGV)
    if data.startswith(b'{"hold_until": '):
        release = Path(json.loads(data)["hold_until"])
        wait_for(release.exists, f"the test releases the parse ({release})")
    return load_json(data)


register_loader(".json", _load)
