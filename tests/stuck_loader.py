"""A loader plugin for the tests (`ingest.loader_plugins = ["stuck_loader"]`): a JSON file
holding exactly hostile_files.STUCK_JSON makes its parser wait forever, as a parser stuck in
a loop would, and one holding CRASH_JSON kills its process, as a crash in C code would; any
other JSON file is read by the real JSON loader.

It is imported like any user's plugin, by the ingesting process and by each parse worker.
"""

from __future__ import annotations

import os
import signal
import threading

from hostile_files import CRASH_JSON, STUCK_JSON

from kbqa.ingest.loaders import register_loader
from kbqa.ingest.loaders.jsondoc import load_json
from kbqa.ingest.types import LoadOptions, Section


def _load(data: bytes, options: LoadOptions) -> list[Section]:
    if data == STUCK_JSON:
        threading.Event().wait()  # forever: only killing the worker ends it
    if data == CRASH_JSON:
        os.kill(os.getpid(), signal.SIGSEGV)
    return load_json(data)


register_loader(".json", _load)
