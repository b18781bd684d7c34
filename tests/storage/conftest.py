from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import DIM

from storage.kb import KnowledgeBase

# Every test that uses the `kb` fixture (or asks for `backend`) runs on each backend, so the
# two cannot drift apart. `@pytest.mark.backends("faiss")` narrows a test to the ones named.
BACKENDS = ("faiss", "milvus")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run only on these storage backends")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("backend", marker.args if marker else BACKENDS)


@pytest.fixture(scope="session")
def milvus_lite() -> None:
    """Skip (with the reason) where Milvus Lite cannot start on this machine."""
    from storage.errors import StorageError
    from storage.milvus_client import acquire, release

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
def kbs_dir(tmp_path: Path) -> Path:
    return tmp_path / "kbs"


@pytest.fixture
def kb(kbs_dir: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[KnowledgeBase]:
    if backend == "milvus":
        request.getfixturevalue("milvus_lite")
    with KnowledgeBase.create(
        kbs_dir, "test", embedding="fake", dim=DIM, backend=backend
    ) as created:
        yield created
