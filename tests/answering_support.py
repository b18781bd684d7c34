"""Real parts for the answering tests, built once per test process.

One KBQA home, whose converted models are the process's (tests/model_cache.py: converting the
SmolLM2 GGUF takes ~20 s, so it happens once), holds knowledge bases ingested with the bundled
MiniLM embedding from tests/data/answering: `ops` (a Chinese deployment manual and an English
operations page) and `hr` (a Chinese leave policy). Test modules wrap these functions in
fixtures; the state is per process, so the model loads once however many modules use it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage

from kbqa.settings import Settings, load_settings
from tests.model_cache import link_models

DATA = Path(__file__).parent / "data" / "answering"
_lock = threading.Lock()
_home: Path | None = None


def shared_home() -> Path:
    """The process-wide KBQA home with the model cache and the `ops` and `hr` KBs."""
    global _home
    with _lock:
        if _home is None:
            from kbqa.ingest.pipeline import ingest_paths

            home = link_models(Path(tempfile.mkdtemp(prefix="kbqa-answering-")))
            atexit.register(shutil.rmtree, home, True)
            settings = load_settings(home=home)
            for kb in ("ops", "hr"):
                report = ingest_paths(settings, kb, [DATA / kb])
                assert not report.failed, report.failed
            _home = home
        return _home


def settings_for(home: Path | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings on the shared home (or `home`), short answers, plus per-test overrides."""
    overrides: dict[str, Any] = {
        "llm": {"max_new_tokens": 24},
        "retrieval": {"min_relevance": 0.45},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_settings(home=home or shared_home(), overrides=overrides)


def prompt_text(messages: list[BaseMessage]) -> str:
    """The last (user) message the model was given."""
    return messages[-1].text
