"""Where a home's KBs live: the KBs folder, and the database that holds them, if any.

`KBsDir` is the KBs folder (`$KBQA_HOME/kbs`) carrying `storage.database`. Every caller
already passes the folder to KnowledgeBase.open/create/list_names/delete; carrying the
database URL with it means none of them can open the wrong place. With no database, each KB
is a SQLite file in its own subfolder (as always); with a PostgreSQL URL, the KBs' rows are
in that database and the folder keeps only this host's caches (FAISS files per generation).
"""

from __future__ import annotations

from pathlib import Path, PosixPath


class KBsDir(PosixPath):
    database: str | None = None
    """A PostgreSQL URL (`postgresql://…`), or None for SQLite files in the folder."""


def kbs_dir_with_database(folder: Path, database: str | None) -> Path:
    """`folder` as a KBs folder whose KBs live in `database` (None or "" = SQLite files)."""
    located = KBsDir(folder)
    located.database = database or None
    return located


def database_of(kbs_dir: Path) -> str | None:
    """The database URL a KBs folder carries; None for SQLite files (any plain Path)."""
    return getattr(kbs_dir, "database", None)
