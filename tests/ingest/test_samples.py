"""The sample folder the README's quickstart ingests loads and splits cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.ingest.loaders import SUPPORTED_EXTENSIONS, load_document
from kbqa.ingest.splitter import split_sections

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.mark.parametrize("path", sorted(SAMPLES.iterdir()), ids=lambda path: path.name)
def test_sample_loads_and_splits(path: Path) -> None:
    assert path.suffix in SUPPORTED_EXTENSIONS
    sections = load_document(path, max_bytes=2**20)
    chunks = split_sections(sections, chunk_size=400, chunk_size_zh=250, chunk_overlap=50)
    assert chunks and all(chunk.text.strip() for chunk in chunks)


def test_samples_hold_the_quickstart_fact() -> None:
    sections = load_document(SAMPLES / "aurora_install.md", max_bytes=2**20)
    assert any("INT4 量化后显存需求约 6 GB" in section.text for section in sections)
