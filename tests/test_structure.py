"""One way to do each thing, read from the source with ast: a KB is opened and created from
settings in one place, a class of the foundations has one name in the whole tree, and what
ingest and storage define is used."""

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


def test_every_function_and_class_of_ingest_and_storage_is_used() -> None:
    # A name written once in all the Python of the repository is defined and never used
    # (ingest.pipeline.FileProblem was). Decorated functions are used by their decorator.
    everything = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in (*PACKAGES, "tests", "bench")
        for path in (REPO / folder).rglob("*.py")
    )
    written = Counter(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", everything))
    unused = [
        f"{path}:{node.lineno} {node.name}"
        for path, tree in _sources()
        if path.parts[0] in ("ingest", "storage")
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not (node.decorator_list and not isinstance(node, ast.ClassDef))
        and written[node.name] == 1
    ]
    assert unused == []
