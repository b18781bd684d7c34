"""Connections to Milvus for the milvus backend: one MilvusClient per URI and process.

A URI is a Milvus server (`http://host:19530`, a cluster's proxy) or a Milvus Lite file
(`…/milvus.db`, the embedded Milvus that pymilvus starts in-process; one process per file).
pymilvus is an optional extra, imported on first use. Its errors become one-line
StorageErrors that name the URI; pymilvus' own loggers, which print a traceback for every
failed call, are turned down to CRITICAL so that the CLI's one-line errors stay one line.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kbqa.storage.errors import StorageError

DEFAULT_LITE_FILE = "milvus.db"
_NOISY_LOGGERS = ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer")
_LITE_LOGGER = "milvus_lite.server_manager"

_lock = threading.Lock()
_clients: dict[str, tuple[Any, int]] = {}  # uri -> (MilvusClient, users)


def default_uri(kbs_dir: Path) -> str:
    """`$KBQA_HOME/milvus.db` for `$KBQA_HOME/kbs`: a Milvus Lite file beside the KBs."""
    return str(kbs_dir.parent / DEFAULT_LITE_FILE)


def is_lite(uri: str) -> bool:
    return uri.endswith(".db")  # pymilvus' own rule for local Milvus Lite files


def new_collection_name(kb_name: str) -> str:
    """`kbqa_<ascii part of the name>_<12 hex>`: valid in Milvus, unique per created KB.

    Milvus allows letters, digits and `_` only; the random suffix keeps KBs of the same name
    (another kbqa home on the same cluster, or a KB deleted and created again) apart.
    """
    readable = re.sub(r"[^A-Za-z0-9_]", "_", kb_name)[:64]
    return f"kbqa_{readable}_{uuid.uuid4().hex[:12]}"


def acquire(uri: str) -> Any:
    """The process' client for `uri`, connecting on first use; pair with `release`."""
    uri = _key(uri)
    with _lock:
        client, users = _clients.get(uri) or (None, 0)
        if client is None:
            client = _connect(uri)
        _clients[uri] = (client, users + 1)
        return client


def release(uri: str) -> None:
    """Give a client back; the last user closes it (and stops a Milvus Lite file's server)."""
    uri = _key(uri)
    with _lock:
        client, users = _clients[uri]
        if users > 1:
            _clients[uri] = (client, users - 1)
            return
        del _clients[uri]
    client.close()
    if is_lite(uri):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


@contextmanager
def milvus_errors(uri: str) -> Iterator[None]:
    """Report pymilvus and gRPC failures as one-line StorageErrors naming `uri`."""
    import grpc
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        raise StorageError(f"Milvus at {uri}: {_one_line(exc.message)}") from exc
    except grpc.RpcError as exc:
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        raise StorageError(f"Milvus at {uri}: {_one_line(str(details))}") from exc


def _key(uri: str) -> str:
    # pymilvus runs one Milvus Lite server per absolute path: share clients the same way.
    return os.path.abspath(uri) if is_lite(uri) else uri


def _connect(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise StorageError(
            "the milvus backend needs pymilvus (and milvus-lite for local files): "
            "pip install 'kbqa[milvus]'"
        ) from exc
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if is_lite(uri):
        return _connect_lite(uri, MilvusClient)
    with milvus_errors(uri):
        return MilvusClient(uri=uri)


def _connect_lite(uri: str, client_class: Any) -> Any:
    # Milvus Lite logs why it could not start (typically: another process holds the file)
    # and pymilvus then says only "Open local milvus failed"; keep the reason for the user.
    reasons = _Reasons()
    lite_logger = logging.getLogger(_LITE_LOGGER)
    lite_logger.addHandler(reasons)
    propagate, lite_logger.propagate = lite_logger.propagate, False
    try:
        with milvus_errors(uri):
            return client_class(uri=uri)
    except StorageError as exc:
        reason = reasons.last or str(exc)
        hint = ""
        if "lock" in reason:
            hint = (
                "; Milvus Lite serves one process at a time: stop the other one, or set "
                "storage.milvus_uri to a Milvus server"
            )
        raise StorageError(f"cannot open the Milvus Lite file {uri}: {reason}{hint}") from exc
    finally:
        lite_logger.removeHandler(reasons)
        lite_logger.propagate = propagate


class _Reasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.last = _one_line(str(exc) if exc is not None else record.getMessage())


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
