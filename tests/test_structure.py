"""One way to do each thing, read from the source with ast: a KB is opened, created and
deleted from settings in one place, no two classes share a name, and what every package
defines is used."""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from kbqa.devtools.layers import PACKAGES

REPO = Path(__file__).resolve().parents[1]


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO), ast.parse(path.read_text(encoding="utf-8"))


def test_kbs_are_opened_created_and_deleted_only_through_storage_config() -> None:
    # kbqa and ingest call kbqa.storage.config.open_kb/create_kb/delete_kb, which turn the settings
    # into KnowledgeBase.open/create/delete's arguments (the CLI and the server each wrote
    # delete's out); within storage, the LangChain store has its own.
    calls = [
        f"{path}:{node.lineno}"
        for path, tree in _sources()
        if path.parts[0] != "storage"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("open", "create", "delete")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "KnowledgeBase"
    ]
    assert calls == [], "use kbqa.storage.config.open_kb/create_kb/delete_kb instead"


def test_no_two_classes_share_a_name() -> None:
    # One name per concept: a class and its JSON shape get different names (the hit
    # kbqa.storage.types.SearchHit and its HTTP body kbqa.server.schemas.SearchResult), so that a
    # reader who meets a name knows which of the two it is.
    defined: dict[str, list[str]] = {}
    for path, tree in _sources():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(path.as_posix())
    twice = {name: paths for name, paths in defined.items() if len(paths) > 1}
    assert twice == {}


def test_every_module_level_function_and_class_is_used() -> None:
    # A name written once in all the Python of the repository is defined and never used
    # (kbqa.ingest.pipeline.FileProblem was). Decorated functions are used by their decorator;
    # `__getattr__` and other dunders by Python.
    everything = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in (*PACKAGES, "tests", "bench")
        for path in (REPO / folder).rglob("*.py")
    )
    written = Counter(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", everything))
    unused = [
        f"{path.as_posix()} {node.name}"
        for path, tree in _sources()
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not (node.decorator_list and not isinstance(node, ast.ClassDef))
        and not (node.name.startswith("__") and node.name.endswith("__"))
        and written[node.name] == 1
    ]
    assert unused == []
