"""pyproject's runtime dependencies against the runtime's imports (kbqa/devtools/dependencies.py),
on the real tree and on small trees with one disagreement each."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.devtools import dependencies
from kbqa.devtools.layers import PACKAGES


def test_runtime_dependencies_are_what_the_runtime_imports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert dependencies.main() == 0, capsys.readouterr().out


def test_every_exception_names_something_real() -> None:
    # A reason left behind after its dependency went would excuse the next one silently.
    project = Path(__file__).resolve().parents[1] / "pyproject.toml"
    text = project.read_text(encoding="utf-8")
    for name in dependencies.NEEDED_WITHOUT_IMPORT:
        assert f'"{name}>=' in text, name
    runtime = dependencies.runtime_imports(project.parent)
    for module in [*dependencies.OPTIONAL_IMPORTS, *dependencies.UNDECLARED_IMPORTS]:
        assert module in runtime, module


def _project(root: Path, runtime: list[str], extras: dict[str, list[str]], code: str) -> Path:
    lines = ["[project]", f"dependencies = {runtime!r}", "[project.optional-dependencies]"]
    lines += [f"{name} = {reqs!r}" for name, reqs in extras.items()]
    root.mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for package in PACKAGES:
        (root / package).mkdir()
    (root / "kbqa" / "module.py").write_text(code, encoding="utf-8")
    return root


def test_an_import_that_is_not_a_runtime_dependency_is_reported(tmp_path: Path) -> None:
    root = _project(tmp_path, ["typer>=0.12"], {}, "import typer\nimport numpy as np\n")
    assert dependencies.check(root) == [
        "numpy (imported by kbqa/module.py): numpy is not a runtime dependency"
    ]


def test_a_runtime_dependency_nothing_imports_is_reported(tmp_path: Path) -> None:
    runtime = ["numpy>=1.26", "nh3>=0.2", "lxml>=5.0"]  # lxml: a documented exception
    root = _project(tmp_path, runtime, {"bench": ["httpx"]}, "def f():\n    import numpy\n")
    [problem] = dependencies.check(root)
    assert problem.startswith("nh3: a runtime dependency the runtime never imports")


def test_an_optional_import_needs_its_extra(tmp_path: Path) -> None:
    code = "def connect():\n    import psycopg\n"
    assert dependencies.check(_project(tmp_path / "a", [], {"postgres": ["psycopg"]}, code)) == []
    assert dependencies.check(_project(tmp_path / "b", [], {"dev": ["psycopg"]}, code)) == [
        "psycopg (imported by kbqa/module.py): the 'postgres' extra does not list psycopg"
    ]
