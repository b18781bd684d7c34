"""ingest/, storage/ and prompts/ are imported as kbqa.ingest, kbqa.storage and kbqa.prompts
(docs/architecture.md): through links under kbqa/, and never under their bare names."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder", ["ingest", "storage", "prompts"])
def test_each_folder_is_linked_under_kbqa(folder: str) -> None:
    link = REPO / "kbqa" / folder
    assert link.is_symlink() and link.readlink() == Path("..", folder), (
        f"kbqa/{folder} must be a link to ../{folder}: use a checkout that keeps symbolic links"
    )


def test_the_kbqa_names_load_the_folders_files() -> None:
    import kbqa.ingest.pipeline
    import kbqa.prompts
    import kbqa.storage.kb

    assert Path(kbqa.storage.kb.__file__).resolve() == REPO / "storage" / "kb.py"
    assert Path(kbqa.ingest.pipeline.__file__).resolve() == REPO / "ingest" / "pipeline.py"
    assert "{question}" in kbqa.prompts.load_template("en")  # the data file beside it


@pytest.mark.parametrize("parts", [("ingest",), ("storage", "kb"), ("prompts",)])
def test_a_bare_name_is_refused_rather_than_loaded_twice(parts: tuple[str, ...]) -> None:
    # The guard in tests/conftest.py stops the first part, before anything is loaded.
    with pytest.raises(ImportError, match=f"^import kbqa[.]{parts[0]}, not {parts[0]}$"):
        importlib.import_module(".".join(parts))
    assert parts[0] not in sys.modules
