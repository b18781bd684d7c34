"""Scoped API keys: created with `kbqa keys create`, kept in `$KBQA_HOME/keys.json`, checked by
the HTTP server (and so by `/mcp`) on every request.

A key is 256 random bits shown once, at creation; the file keeps only its SHA-256 digest. A
slow password hash (bcrypt, scrypt) defends guessable secrets; these are not guessable, and a
fast digest keeps the per-request check cheap. Every lookup compares the digest with every
stored one in constant time (`hmac.compare_digest`, no early exit), so neither the key's
content nor which record matched shows in the response time.

Scopes nest: `read` asks, searches, lists and views; `write` also uploads and deletes
documents; `admin` also creates and deletes knowledge bases. A key may be limited to some KBs:
the others are invisible to it, exactly as if they did not exist.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args

from kbqa.errors import UsageError
from kbqa.storage.errors import InvalidKBName
from kbqa.storage.names import validate_kb_name

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
KEY_PREFIX = "kbqa_"
KEYS_FILE = "keys.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class KeyUsageError(UsageError):
    """A bad `kbqa keys` request: duplicate or invalid name, unknown scope, invalid KB name."""


@dataclass(frozen=True)
class Access:
    """What one request may do: the scope of its key and the KBs it sees (None = all)."""

    name: str
    scope: Scope
    kbs: frozenset[str] | None = None

    def allows(self, needed: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)

    def sees(self, kb: str) -> bool:
        return self.kbs is None or unicodedata.normalize("NFC", kb) in self.kbs

    def visible(self, kbs: Iterable[str]) -> list[str]:
        return [kb for kb in kbs if self.sees(kb)]


FULL_ACCESS = Access("local", "admin")
"""An open server, `KBQA_API_KEY`, and `kbqa mcp` over stdio (the user's own process)."""


@dataclass(frozen=True)
class KeyRecord:
    name: str
    scope: Scope
    kbs: tuple[str, ...] | None
    digest: str
    """SHA-256 of the key, hex."""
    created_at: str

    def to_json(self) -> dict[str, Any]:
        """The public view (`kbqa keys list --json`): never the digest."""
        kbs = list(self.kbs) if self.kbs is not None else None
        return {"name": self.name, "scope": self.scope, "kbs": kbs, "created_at": self.created_at}

    def access(self) -> Access:
        kbs = frozenset(self.kbs) if self.kbs is not None else None
        return Access(self.name, self.scope, kbs)


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """The keys of one home. Reads are cached until the file changes (another process's
    `kbqa keys revoke` takes effect on the server's next request); writes hold an flock and
    replace the file atomically, readable by its owner only."""

    def __init__(self, home: Path) -> None:
        self.path = home / KEYS_FILE
        self._signature: tuple[int, int, int] | None = None
        self._records: list[KeyRecord] = []

    def records(self) -> list[KeyRecord]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._signature, self._records = None, []
            return []
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature != self._signature:
            self._records = _parse(self.path)
            self._signature = signature
        return list(self._records)

    def authenticate(self, key: str) -> Access | None:
        """The access `key` grants, or None. Constant time in the key and the records' order."""
        given = digest_of(key).encode()
        found: KeyRecord | None = None
        for record in self.records():
            if hmac.compare_digest(given, record.digest.encode()):
                found = record
        return found.access() if found is not None else None

    def create(self, name: str, scope: str, kbs: Iterable[str] | None) -> tuple[KeyRecord, str]:
        """A new key named `name`: its record and the key itself (shown once, never stored)."""
        if not _NAME.fullmatch(name):
            raise KeyUsageError(
                f"invalid key name {name!r}: 1 to 64 letters, digits, '_', '-', '.' "
                "(starting with a letter or digit)"
            )
        if scope not in SCOPES:
            raise KeyUsageError(f"unknown scope {scope!r}: use read, write or admin")
        limited = _kb_names(kbs) if kbs is not None else None
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        record = KeyRecord(name, cast(Scope, scope), limited, digest_of(key), created)
        with self._locked() as records:
            if any(r.name == name for r in records):
                raise KeyUsageError(f"a key named {name!r} exists (revoke it first)")
            records.append(record)
        return record, key

    def revoke(self, name: str) -> bool:
        """Forget the key `name`; False if there was none."""
        with self._locked() as records:
            kept = [r for r in records if r.name != name]
            removed = len(kept) != len(records)
            records[:] = kept
        return removed

    @contextmanager
    def _locked(self) -> Iterator[list[KeyRecord]]:
        """The records to change in place, written back when the block ends without error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = _parse(self.path) if self.path.exists() else []
            yield records
            _write(self.path, records)


def _kb_names(kbs: Iterable[str]) -> tuple[str, ...]:
    names: list[str] = []
    for kb in kbs:
        try:
            name = validate_kb_name(kb)
        except InvalidKBName as e:
            raise KeyUsageError(str(e)) from None
        if name not in names:
            names.append(name)
    if not names:
        raise KeyUsageError("--kb needs at least one knowledge base name")
    return tuple(names)


def _parse(path: Path) -> list[KeyRecord]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [
            KeyRecord(
                name=str(item["name"]),
                scope=_scope(item["scope"]),
                kbs=tuple(item["kbs"]) if item["kbs"] is not None else None,
                digest=str(item["sha256"]),
                created_at=str(item.get("created_at", "")),
            )
            for item in data["keys"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Refusing every key beats guessing what a damaged file meant.
        raise KeyUsageError(f"the key file {path} is unreadable or damaged: {e}") from None


def _scope(value: object) -> Scope:
    if value not in SCOPES:
        raise ValueError(f"unknown scope {value!r}")
    return cast(Scope, value)


def _write(path: Path, records: list[KeyRecord]) -> None:
    data = {
        "keys": [
            {
                "name": r.name,
                "scope": r.scope,
                "kbs": list(r.kbs) if r.kbs is not None else None,
                "sha256": r.digest,
                "created_at": r.created_at,
            }
            for r in records
        ]
    }
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
