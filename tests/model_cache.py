"""One folder of converted models for every KBQA home a test process makes.

A home keeps what it converts under `cache/models/`: the bundled SmolLM2 as dequantised
safetensors (~20 s from the GGUF on 2 cores) and the embedding as int8 ONNX (seconds). A fresh
home would pay both again, in the tests' process or in every `kbqa` subprocess started on it.
Homes whose first conversion is not what their test checks link `cache/models` here instead,
so each conversion happens once per test process: it is still made, and checked, every run
(tests/llm/test_default.py for SmolLM2's copy, tests/storage/test_onnx_embedding.py with a
cache of its own for the export). The folder is private to the process, so a concurrent
session on the same machine never races it, and it is removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_folder: Path | None = None


def shared_models() -> Path:
    """The process-wide folder of converted models (made on first use)."""
    global _folder
    with _lock:
        if _folder is None:
            _folder = Path(tempfile.mkdtemp(prefix="kbqa-models-"))
            atexit.register(shutil.rmtree, _folder, True)
        return _folder


def link_models(home: Path) -> Path:
    """Make `home/cache/models` the shared folder (a symlink); returns `home`."""
    cache = home / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "models").symlink_to(shared_models(), target_is_directory=True)
    return home
