"""One way to do each thing, read from the source with ast: a KB is opened and created from
settings in one place, and a class of the foundations has one name in the whole tree."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from kbqa.devtools.layers import PACKAGES

REPO = Path(__file__).resolve().parents[1]


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO), ast.parse(path.read_text(encoding="utf-8"))


def test_kbs_are_opened_and_created_only_through_storage_config() -> None:
    # kbqa and ingest call storage.config.open_kb/create_kb, which turn the settings into
    # KnowledgeBase.open/create's arguments; within storage, the LangChain store has its own.
    calls = [
        f"{path}:{node.lineno}"
        for path, tree in _sources()
        if path.parts[0] != "storage"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("open", "create")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "KnowledgeBase"
    ]
    assert calls == [], "use storage.config.open_kb/create_kb instead"


def test_a_foundation_class_name_is_not_used_for_another_class() -> None:
    # storage.types.SearchHit and the HTTP schema's SearchHit were two classes of one name.
    defined: dict[str, list[str]] = {}
    for path, tree in _sources():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(str(path))
    foundations = ("storage", "ingest", "prompts")
    twice = {
        name: paths
        for name, paths in defined.items()
        if len(paths) > 1 and any(Path(p).parts[0] in foundations for p in paths)
    }
    assert twice == {}
