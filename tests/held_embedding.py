"""A loader plugin for the tests (`ingest.loader_plugins = ["held_embedding"]`) that registers
no loader: in a kbqa process it holds the embedding of any batch of texts that holds HOLD_WORD
until a server stops its jobs (kbqa.server.jobs.JobRunner.shutdown) or the process is
interrupted, and touches the file named by $KBQA_TEST_HELD once it holds. A test can then kill,
interrupt or stop the process while an ingest is, for certain, short of its commit.

Parse workers import it too (every plugin is imported there); they embed nothing, and it
patches nothing in them.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

from waiting import HANG_GUARD_S

from kbqa.ingest.isolation import Stop
from kbqa.storage.embeddings import Embedder

HOLD_WORD = "hold-the-embedding"
INTERRUPTED = "interrupted"
"""The reason JobRunner.shutdown gives each running job's Stop (kbqa.server.jobs.INTERRUPTED)."""

_stopping = threading.Event()


def _hold(embed: Any) -> Any:
    def held(self: Embedder, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        if any(HOLD_WORD in text for text in texts):
            Path(os.environ["KBQA_TEST_HELD"]).touch()
            if not _stopping.wait(HANG_GUARD_S):
                raise AssertionError("the server never stopped the held ingest")
        return embed(self, texts, *args, **kwargs)

    return held


def _tell(set_reason: Any) -> Any:
    def set_and_tell(self: Stop, reason: str) -> None:
        set_reason(self, reason)
        if reason == INTERRUPTED:
            _stopping.set()

    return set_and_tell


# Only where a test asked for it, and in the server's own process (not in a parse worker): a test
# importing HOLD_WORD changes nothing.
if "KBQA_TEST_HELD" in os.environ and multiprocessing.parent_process() is None:
    Embedder.embed = _hold(Embedder.embed)  # type: ignore[method-assign]
    Stop.set = _tell(Stop.set)  # type: ignore[method-assign]
