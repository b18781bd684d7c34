"""What an ingest reads from the application's settings.

ingest imports nothing of the application (kbqa imports ingest, not the other way round):
these Protocols declare the settings the pipeline reads, by the names users know them by
(`ingest.chunk_size`, `ocr.dpi`, … in docs/configuration.md), and `kbqa.settings.Settings`
has that shape. mypy checks it wherever kbqa hands its settings to ingest; any other object of
this shape (a test's, another application's) will do as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from kbqa.storage.config import StorageConfig


class EmbeddingOptions(Protocol):
    """The `[embedding]` settings: the model a new KB gets and how it runs."""

    @property
    def model(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def backend(self) -> str: ...


class IngestOptions(Protocol):
    """The `[ingest]` settings: chunking, change detection and the bounds on a parse."""

    @property
    def chunk_size(self) -> int: ...
    @property
    def chunk_size_zh(self) -> int: ...
    @property
    def chunk_overlap(self) -> int: ...
    @property
    def max_file_mb(self) -> float: ...
    @property
    def title_enhance(self) -> bool: ...
    @property
    def quick_check(self) -> bool: ...
    @property
    def max_unpacked_mb(self) -> float: ...
    @property
    def max_compression_ratio(self) -> float: ...
    @property
    def max_image_pixels(self) -> int: ...
    @property
    def max_pages(self) -> int: ...
    @property
    def parse_timeout_s(self) -> float: ...
    @property
    def parse_memory_mb(self) -> int: ...
    @property
    def loader_plugins(self) -> Sequence[str]: ...


class OcrOptions(Protocol):
    """The `[ocr]` settings."""

    @property
    def enabled(self) -> bool: ...
    @property
    def max_pages(self) -> int: ...
    @property
    def dpi(self) -> int: ...


class IngestConfig(StorageConfig, Protocol):
    """Everything an ingest run reads: where the KBs are, and the sections above."""

    @property
    def cache_dir(self) -> Path:
        """Where converted models are kept (the ONNX export of the embedding model)."""
        ...

    @property
    def embedding(self) -> EmbeddingOptions: ...
    @property
    def ingest(self) -> IngestOptions: ...
    @property
    def ocr(self) -> OcrOptions: ...
