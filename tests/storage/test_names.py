from __future__ import annotations

import pytest

from kbqa.storage.errors import InvalidKBName, StorageError
from kbqa.storage.names import validate_kb_name


@pytest.mark.parametrize("name", ["default", "知识库_1", "kb-2.v1", "a", "x" * 64, "ÄÖü", "a.b"])
def test_valid_names(name: str) -> None:
    assert validate_kb_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".x",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        "x" * 65,
        "my kb",
        " a",
        "a\x00b",
        "a\tb",
        "a:b",
        "a*b",
        "kb!",
        "知识 库",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidKBName):
        validate_kb_name(name)


def test_invalid_name_is_a_storage_error_with_one_line() -> None:
    with pytest.raises(StorageError) as info:
        validate_kb_name("a/b\nc")
    assert "\n" not in str(info.value).replace("\\n", "")


def test_nfd_name_is_normalised_to_nfc() -> None:
    assert validate_kb_name("cafe\u0301") == "caf\u00e9"
