from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import DIM

from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.places import kbs_dir_with_database

# Every test that uses the `kb` fixture (or asks for `backend`) runs on each backend, so the
# two cannot drift apart. `@pytest.mark.backends("faiss")` narrows a test to the ones named.
BACKENDS = ("faiss", "milvus")
# Likewise every test that uses `kbs_dir` (or `kb`) runs on each database that holds KBs;
# `@pytest.mark.databases("sqlite")` narrows one that reaches into the SQLite file itself.
# Milvus KBs keep their rows in SQLite only.
DATABASES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run only on these storage backends")
    config.addinivalue_line("markers", "databases(*names): run only on these KB databases")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = metafunc.definition.get_closest_marker("backends")
    databases = metafunc.definition.get_closest_marker("databases")
    backend_names = backends.args if backends else BACKENDS
    database_names = databases.args if databases else DATABASES
    if "backend" in metafunc.fixturenames and "database" in metafunc.fixturenames:
        pairs = [
            (b, d)
            for b in backend_names
            for d in database_names
            if not (b == "milvus" and d == "postgresql")
        ]
        metafunc.parametrize("backend,database", pairs)
    elif "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backend_names)
    elif "database" in metafunc.fixturenames:
        metafunc.parametrize("database", database_names)


@pytest.fixture(scope="session")
def milvus_lite() -> None:
    """Skip (with the reason) where Milvus Lite cannot start on this machine."""
    from kbqa.storage.errors import StorageError
    from kbqa.storage.milvus_client import acquire, release

    with tempfile.TemporaryDirectory() as folder:
        uri = str(Path(folder) / "probe.db")
        try:
            acquire(uri)
        except StorageError as exc:
            pytest.skip(f"Milvus Lite cannot start here: {exc}")
        release(uri)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def kbs_dir(tmp_path: Path, database: str, request: pytest.FixtureRequest) -> Path:
    """The KBs folder; with `postgresql`, carrying a new database of the session's server."""
    if database == "sqlite":
        return tmp_path / "kbs"
    return kbs_dir_with_database(tmp_path / "kbs", request.getfixturevalue("postgres_url"))


@pytest.fixture
def kb(kbs_dir: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[KnowledgeBase]:
    if backend == "milvus":
        request.getfixturevalue("milvus_lite")
    with KnowledgeBase.create(
        kbs_dir, "test", embedding="fake", dim=DIM, backend=backend
    ) as created:
        yield created
