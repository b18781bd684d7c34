"""Storage errors. Every message is one line meant for the user (the CLI prints it as is)."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage package raises on purpose."""


class InvalidKBName(StorageError):
    """The name is not 1–64 Unicode letters, digits, `_`, `-`, `.`, or starts with `.`."""


class KBNotFound(StorageError):
    pass


class KBExists(StorageError):
    pass


class KBDamaged(StorageError):
    """The KB's files are not a readable knowledge base (not SQLite, schema or meta missing)."""


class DatabaseUnavailable(StorageError):
    """The database holding the KBs (storage.database) cannot be reached or failed mid-way."""


class KBBusy(StorageError):
    """Another process holds the KB's write lock and the caller chose not to wait."""


class EmbeddingMismatch(StorageError):
    """Vectors do not fit the KB (wrong dimension) or the KB was built with another model."""
