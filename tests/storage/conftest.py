from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import DIM

from storage.kb import KnowledgeBase


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def kbs_dir(tmp_path: Path) -> Path:
    return tmp_path / "kbs"


@pytest.fixture
def kb(kbs_dir: Path) -> Iterator[KnowledgeBase]:
    with KnowledgeBase.create(kbs_dir, "test", embedding="fake", dim=DIM) as created:
        yield created
