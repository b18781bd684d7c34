"""The repository documents itself: docs/configuration.md matches the settings model, and no
tracked file points at anything outside the repository (a clone must be complete)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kbqa import settings_doc
from kbqa.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"

# The team's private notes folder beside the repository and its design file, and the folder of
# the machine the project was built on. Spelled in pieces so that this file names none of them.
_NOTES_DIR = "../" + "shared"
_DESIGN_FILE = "DESIGN" + ".md"
_BUILD_DIR = "/" + "work/"
OUTSIDE = re.compile("|".join(re.escape(name) for name in (_NOTES_DIR, _DESIGN_FILE, _BUILD_DIR)))


def test_configuration_page_is_the_rendered_settings_model() -> None:
    committed = CONFIGURATION.read_text(encoding="utf-8")
    assert committed == settings_doc.render(), (
        "docs/configuration.md is stale: run `python -m kbqa.settings_doc > docs/configuration.md`"
    )


def _leaf_settings(model: type, path: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        annotation = info.annotation
        key = f"{path}{name}"
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            names.extend(_leaf_settings(annotation, key + "."))
        else:
            names.append(key)
    return names


def test_every_setting_has_a_row_with_a_description() -> None:
    page = settings_doc.render()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z0-9_.]+)` \|.*\| ([^|]*) \|$", page, re.MULTILINE)
    }
    leaves = _leaf_settings(Settings)
    assert len(leaves) > 40
    assert sorted(rows) == sorted(leaves)
    undocumented = [key for key, description in rows.items() if not description.strip()]
    assert undocumented == [], "add an attribute docstring under these fields in kbqa/settings.py"


def test_rows_name_the_environment_variable_that_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    page = settings_doc.render()
    assert "| `llm.chatglm2.max_batch` | `16` | `KBQA_LLM__CHATGLM2__MAX_BATCH` |" in page
    monkeypatch.setenv("KBQA_LLM__CHATGLM2__MAX_BATCH", "3")
    from kbqa.settings import load_settings

    assert load_settings(home=ROOT / "nonexistent-home").llm.chatglm2.max_batch == 3


def test_field_docstrings_are_read_from_the_source() -> None:
    source = 'class A:\n    x: int = 1\n    """Why x."""\n    y: int = 2\n    z: str = ""\n'
    assert settings_doc.field_docstrings(source) == {"A": {"x": "Why x."}}


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_refers_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: model weights, images, test data
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_outside_pattern_catches_each_form() -> None:
    for line in (
        f"see {_NOTES_DIR}/{_DESIGN_FILE}",
        f"the {_DESIGN_FILE} contract",
        f"Path('{_BUILD_DIR}.mirror')",
    ):
        assert OUTSIDE.search(line)
    assert not OUTSIDE.search("docs/http-api.md and work/ in the tree")


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces → -."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_relative_links_in_the_docs_resolve() -> None:
    broken = []
    for page in DOC_PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (
                anchor and path.suffix == ".md" and anchor not in anchors(path)
            ):
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert broken == []


def test_anchors_follow_github() -> None:
    page = ROOT / "docs" / "cli.md"
    assert "kbqa-serve---host-addr---port-n" in anchors(page)
    assert "exit-status" not in anchors(page)


def test_every_command_and_option_is_in_cli_md() -> None:
    import typer

    from kbqa.cli import app

    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing: list[str] = []
    seen: list[str] = []

    def walk(command: Any, words: list[str]) -> None:
        # Duck-typed: recent Typer releases carry their own copy of Click's classes.
        subcommands = getattr(command, "commands", None)
        if subcommands is not None:
            for name, sub in subcommands.items():
                walk(sub, [*words, name])
            return
        heading = "kbqa " + " ".join(words)
        seen.append(heading)
        if f"`{heading}" not in page:
            missing.append(heading)
        for param in command.params:
            for option in getattr(param, "opts", []):
                if option.startswith("--") and option not in ("--help",) and option not in page:
                    missing.append(f"{heading} {option}")

    walk(typer.main.get_command(app), [])
    assert "kbqa kb migrate" in seen and len(seen) >= 18
    assert missing == []


def test_every_route_is_in_http_api_md() -> None:
    import importlib
    import pkgutil

    from fastapi.routing import APIRoute

    import kbqa.server

    page = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    missing: list[str] = []
    seen = 0
    for module in pkgutil.iter_modules(kbqa.server.__path__):
        if not module.name.startswith("routes_"):
            continue
        router = importlib.import_module(f"kbqa.server.{module.name}").router
        for route in router.routes:
            assert isinstance(route, APIRoute)
            for method in route.methods or ():
                seen += 1
                if f"| {method} | `{route.path}` |" not in page:
                    missing.append(f"{method} {route.path}")
    assert seen >= 17
    assert missing == []
