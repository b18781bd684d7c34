"""What storage reads from the application's settings, and the one way to open a KB with it.

storage imports nothing of the application: these Protocols declare the few settings it reads,
and `kbqa.settings.Settings` has that shape (mypy checks it wherever kbqa passes its settings
here). `open_kb`, `create_kb` and `delete_kb` turn those settings into the arguments of
`KnowledgeBase.open/create/delete`, so the CLI, the server, retrieval and the ingest pipeline
open a KB the same way; `check_kb` is the one damage check (`kbqa kb check`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kbqa.storage.errors import KBDamaged
from kbqa.storage.kb import KnowledgeBase


class StorageOptions(Protocol):
    """The `[storage]` settings (see docs/configuration.md)."""

    @property
    def backend(self) -> str: ...
    @property
    def index(self) -> str: ...
    @property
    def approximate_threshold(self) -> int: ...
    @property
    def milvus_uri(self) -> str: ...


class StorageConfig(Protocol):
    """Where a home's KBs live and how their indexes are built."""

    @property
    def kbs_dir(self) -> Path:
        """The KBs folder, carrying `storage.database`
        (kbqa.storage.places.kbs_dir_with_database)."""
        ...

    @property
    def storage(self) -> StorageOptions: ...


def open_kb(config: StorageConfig, name: str) -> KnowledgeBase:
    """KB `name` as configured; KBNotFound, KBDamaged or InvalidKBName otherwise."""
    storage = config.storage
    return KnowledgeBase.open(
        config.kbs_dir,
        name,
        index=storage.index,
        approximate_threshold=storage.approximate_threshold,
        milvus_uri=storage.milvus_uri or None,
    )


def create_kb(
    config: StorageConfig,
    name: str,
    *,
    embedding: str,
    dim: int,
    backend: str | None = None,
    kbs_dir: Path | None = None,
) -> KnowledgeBase:
    """A new KB `name` (KBExists if there is one). `backend`: None = `storage.backend`;
    `kbs_dir`: another KBs folder than the configured one (`kbqa kb migrate --to-database`)."""
    storage = config.storage
    return KnowledgeBase.create(
        config.kbs_dir if kbs_dir is None else kbs_dir,
        name,
        embedding=embedding,
        dim=dim,
        backend=backend or storage.backend,
        index=storage.index,
        approximate_threshold=storage.approximate_threshold,
        milvus_uri=storage.milvus_uri or None,
    )


def delete_kb(config: StorageConfig, name: str) -> None:
    """Delete KB `name` (KBNotFound, or KBBusy while an ingest holds it)."""
    KnowledgeBase.delete(config.kbs_dir, name, milvus_uri=config.storage.milvus_uri or None)


def check_kb(config: StorageConfig, name: str) -> list[str]:
    """Problems found in KB `name`; [] when healthy. A KB that cannot be opened or read is one
    problem (KBNotFound and InvalidKBName are raised: there is nothing to check)."""
    try:
        with open_kb(config, name) as kb:
            return kb.check()
    except KBDamaged as e:
        return [str(e)]
