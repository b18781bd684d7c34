"""Fixtures for the HTTP tests: a home with a small KB and the real server over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import LiveServer, make_home, server_settings, start_server, write_documents

from kbqa.ingest.pipeline import ingest_paths
from kbqa.server.app import create_app


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread(one_torch_thread: None) -> None:
    """The bundled model answers in these servers' threads: torch on one thread while they do
    (why: one_torch_thread in tests/conftest.py)."""


@pytest.fixture(scope="session")
def docs_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the `default` KB holding DOCUMENTS."""
    home = make_home(tmp_path_factory, "server-home")
    folder = write_documents(home.parent / f"{home.name}-docs")
    ingest_paths(server_settings(home), "default", [folder])
    return home


@pytest.fixture(scope="session")
def live(docs_home: Path) -> Iterator[LiveServer]:
    """The real server with the bundled model, over the `default` KB."""
    settings = server_settings(docs_home, queue_size=4)
    server = start_server(create_app(settings), settings)
    yield server
    server.stop()
