"""Optional cross-encoder reranking of retrieved hits (`retrieval.reranker` = a model directory).

A cross-encoder reads the question and a passage together and scores how well the passage
answers it; it is slower than the bi-encoder but much better at ordering a short candidate
list. The model is any sentence-transformers CrossEncoder directory (bge-reranker-base,
bge-reranker-v2-m3, ms-marco-MiniLM-L-6-v2, …), loaded once per process, offline.

Scores: the model's raw logits mapped to 0..1 with a sigmoid, whatever activation the model
directory declares, so a hit's score means the same for every reranker. A two-label
classifier (irrelevant, relevant) scores sigmoid(relevant - irrelevant), which is its
softmax probability of "relevant".
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kbqa.errors import ConfigError
from kbqa.relevance import RELEVANCE, lexical_score
from kbqa.settings import Settings
from kbqa.storage.types import SearchHit

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

RERANK = "rerank"
"""Key of the reranker's 0..1 score in SearchHit.extra."""


class RerankerUnavailable(ConfigError):
    """The configured reranker cannot be loaded; the message is one line for the user."""


def passage(hit: SearchHit) -> str:
    """What the reranker reads: "file stem > heading", then the chunk text (as embedded)."""
    title = " > ".join(part for part in (PurePosixPath(hit.source).stem, hit.heading) if part)
    return f"{title}\n{hit.text}" if title else hit.text


def _sigmoid(x: float) -> float:
    # Split by sign so that exp never overflows for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class Reranker:
    """Scores (question, passage) pairs with a CrossEncoder. Thread-safe."""

    def __init__(self, path: str, *, device: str = "cpu", batch_size: int = 16) -> None:
        self.path = path
        self.batch_size = batch_size
        self._model = _load(path, device)
        self._lock = threading.Lock()
        labels = int(self._model.num_labels)
        if labels not in (1, 2):
            raise RerankerUnavailable(
                f"reranker {path} has {labels} output labels; a cross-encoder reranker has 1 or 2"
            )
        self._labels = labels

    def scores(self, question: str, passages: Sequence[str]) -> list[float]:
        """A 0..1 score per passage, higher = more relevant to `question`."""
        if not passages:
            return []
        import torch

        pairs = [(question, text) for text in passages]
        with self._lock:
            logits = self._model.predict(
                pairs,
                batch_size=self.batch_size,
                activation_fn=torch.nn.Identity(),  # raw logits: we apply our own sigmoid
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        rows = logits.reshape(len(pairs), self._labels)  # [n, labels]
        margins = rows[:, 0] if self._labels == 1 else rows[:, 1] - rows[:, 0]  # [n]
        return [_sigmoid(float(m)) for m in margins]

    def rerank(self, question: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
        """`hits` ordered by the reranker, best first; each hit's score is the reranker's.

        The score before reranking stays in extra["dense"] (storage puts it there) and the
        reranker's also goes to extra["rerank"]. Equal scores keep the incoming order.
        """
        scored = self.scores(question, [passage(hit) for hit in hits])
        reranked = [
            replace(hit, score=score, extra={**hit.extra, RERANK: score})
            for hit, score in zip(hits, scored, strict=True)
        ]
        order = sorted(range(len(reranked)), key=lambda i: -reranked[i].score)
        return [reranked[i] for i in order]


def _load(path: str, device: str) -> CrossEncoder:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise RerankerUnavailable(f"reranker {path} is not a directory (retrieval.reranker)")
    if not (directory / "config.json").is_file():
        raise RerankerUnavailable(
            f"reranker {path} is not a cross-encoder model directory (no config.json)"
        )
    # A directory is loaded as is; nothing may reach the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import CrossEncoder
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return CrossEncoder(str(directory.resolve()), device=device, local_files_only=True)
    except Exception as e:  # transformers raises many types for a bad model directory
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RerankerUnavailable(f"cannot load reranker {path}: {reason}") from e


def rerank_hits(settings: Settings, question: str, hits: Sequence[SearchHit]) -> list[SearchHit]:
    """`hits` reordered by the configured reranker (as they are when none is configured).

    The relevance that gates what reaches the model becomes max(reranker score, lexical):
    the reranker's score replaces the dense cosine in kbqa.relevance, at full weight since a
    reranker, unlike the bundled embedding, is chosen for the documents' language.
    """
    path = settings.retrieval.reranker
    if not path or not hits:
        return list(hits)
    reranked = get_reranker(path, settings.embedding.device).rerank(question, hits)
    return [
        replace(hit, extra={**hit.extra, RELEVANCE: max(hit.score, lexical_score(question, hit))})
        for hit in reranked
    ]


@cache
def get_reranker(path: str, device: str = "cpu") -> Reranker:
    """One Reranker per (directory, device) per process: loading costs seconds."""
    return Reranker(path, device=device)
