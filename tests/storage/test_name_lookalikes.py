"""KB names are compared in canonical form (NFKC, ASCII digits): look-alikes are one name, a new
name needs a letter or a digit, and KBs created under the earlier rules still open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbqa.storage.errors import InvalidKBName, KBExists
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.names import validate_kb_name, validate_new_kb_name


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("ＡＢ", "AB"),  # full-width letters
        ("kb\u0661\u0662", "kb12"),  # Arabic-Indic digits
        ("kb\u06f3", "kb3"),  # Extended Arabic-Indic (Persian) digit
        ("ｋｂ－２", "kb-2"),  # full-width hyphen-minus and digit
        ("\ufb01le", "file"),  # the ligature fi
        ("cafe\u0301", "caf\u00e9"),
    ],
)
def test_lookalike_names_have_one_canonical_form(given: str, canonical: str) -> None:
    assert validate_kb_name(given) == canonical
    assert validate_new_kb_name(given) == canonical


@pytest.mark.parametrize("name", ["-", "_", "-.-", "__", "－"])
def test_a_new_name_needs_a_letter_or_digit(name: str) -> None:
    with pytest.raises(InvalidKBName, match="must contain a letter or a digit"):
        validate_new_kb_name(name)


@pytest.mark.parametrize("name", ["ａ／ｂ", "．ｘ", "Ａ　Ｂ", "\u2024x"])
def test_fullwidth_separators_are_checked_after_normalisation(name: str) -> None:
    with pytest.raises(InvalidKBName):
        validate_kb_name(name)


def _kb(kbs_dir: Path, name: str) -> KnowledgeBase:
    return KnowledgeBase.create(kbs_dir, name, embedding="test-model", dim=4)


def test_creating_a_lookalike_of_an_existing_kb_is_refused(tmp_path: Path) -> None:
    _kb(tmp_path, "AB").close()
    with pytest.raises(KBExists, match="knowledge base AB already exists"):
        _kb(tmp_path, "ＡＢ")
    _kb(tmp_path, "kb1").close()
    with pytest.raises(KBExists):
        _kb(tmp_path, "kb\u0661")
    assert KnowledgeBase.list_names(tmp_path) == ["AB", "kb1"]


def _legacy(kbs_dir: Path, name: str) -> None:
    """A KB as the earlier rules let it be created: its directory under a name not canonical."""
    _kb(kbs_dir, "legacy").close()
    os.rename(kbs_dir / "legacy", kbs_dir / name)


@pytest.mark.parametrize("name", ["ＡＢ", "-", "kb\u0661"])
def test_kbs_created_under_the_earlier_rules_still_open_and_delete(
    tmp_path: Path, name: str
) -> None:
    _legacy(tmp_path, name)
    with KnowledgeBase.open(tmp_path, name) as kb:
        assert kb.name == name
        assert kb.info().embedding == "test-model"
    KnowledgeBase.delete(tmp_path, name)
    assert KnowledgeBase.list_names(tmp_path) == []


def test_a_legacy_kb_is_reached_by_its_canonical_name_and_blocks_a_lookalike(
    tmp_path: Path,
) -> None:
    _legacy(tmp_path, "ＡＢ")
    with KnowledgeBase.open(tmp_path, "AB") as kb:
        assert kb.name == "ＡＢ"
    with pytest.raises(KBExists, match="look the same as the existing ＡＢ"):
        _kb(tmp_path, "AB")
    assert KnowledgeBase.list_names(tmp_path) == ["ＡＢ"]
