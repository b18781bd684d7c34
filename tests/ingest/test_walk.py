"""Folder walking: every entry that cannot be used is reported on its own and the rest is ingested.

Real symbolic links, FIFOs, sockets and unreadable folders made at test time, a real KB.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbqa.cli import app
from kbqa.ingest.pipeline import ingest_paths
from kbqa.kb_admin import list_documents
from kbqa.settings import Settings, load_settings

NOBODY = 65534
LOOP = "symlink_loop"

runner = CliRunner()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "home")


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A folder with two documents and, beside them, every kind of entry that is not one."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "loop").mkdir()
    (folder / "guide.md").write_text("# Guide\n\nAurora needs Python 3.11.\n")
    (folder / "sub" / "notes.txt").write_text("The release is called Borealis.\n")
    os.symlink("b", folder / "loop" / "a")  # a → b → a
    os.symlink("a", folder / "loop" / "b")
    os.symlink("gone.txt", folder / "dangling.txt")
    os.symlink("guide.md", folder / "alias.md")  # the same document by a second path
    os.symlink("sub", folder / "sub-again")  # the same folder by a second path
    os.mkfifo(folder / "pipe.txt")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.txt"))
    yield folder
    server.close()


def test_loops_broken_links_and_special_files_are_reported_and_the_rest_ingested(
    settings: Settings, tree: Path
) -> None:
    report = ingest_paths(settings, "default", [tree])
    assert report.failed == [
        {
            "path": str(tree / "dangling.txt"),
            "error": "broken symbolic link: gone.txt does not exist",
            "error_code": "broken_link",
        },
        {"path": str(tree / "loop" / "a"), "error": "symbolic link loop", "error_code": LOOP},
        {"path": str(tree / "loop" / "b"), "error": "symbolic link loop", "error_code": LOOP},
    ]
    assert report.skipped == [
        {"path": str(tree / "pipe.txt"), "reason": "not a regular file (named pipe)"},
        {"path": str(tree / "sock.txt"), "reason": "not a regular file (socket)"},
    ]
    # Links inside the tree are followed, and what they reach is one document, not two.
    assert report.added == 2
    assert sorted(d["source"] for d in list_documents(settings, "default")) == [
        "guide.md",
        "sub/notes.txt",
    ]


def test_a_fifo_given_as_argument_is_skipped_not_waited_on(settings: Settings, tree: Path) -> None:
    report = ingest_paths(settings, "default", [tree / "pipe.txt", tree / "guide.md"])
    assert report.skipped == [
        {"path": str(tree / "pipe.txt"), "reason": "not a regular file (named pipe)"}
    ]
    assert report.added == 1


def test_ingest_json_prints_its_object_with_a_loop_and_on_a_fatal_error(
    tmp_path: Path, tree: Path
) -> None:
    home = str(tmp_path / "home")
    result = runner.invoke(app, ["--home", home, "ingest", str(tree), "--json"])
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["added"] == 2
    assert len(report["failed"]) == 3
    missing = tmp_path / "missing"
    result = runner.invoke(app, ["--home", home, "ingest", str(missing), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"kb": "default", "error": f"path not found: {missing}"}
    assert result.stderr == f"error: path not found: {missing}\n"


@contextmanager
def unprivileged() -> Iterator[None]:
    """Permission bits do not stop root from reading, so as root the block runs as `nobody`
    (effective uid only: root comes back after it). Other users already are unprivileged."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder `nobody` can reach (pytest's own temp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="kbqa-walk-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def _give_to_nobody(folder: Path) -> None:
    if os.geteuid() != 0:
        return
    for parent, dirs, files in os.walk(folder):
        for name in [parent, *(os.path.join(parent, n) for n in dirs + files)]:
            os.chown(name, NOBODY, NOBODY)


def test_unreadable_folder_is_reported_and_its_documents_are_kept(open_dir: Path) -> None:
    docs = open_dir / "docs"
    (docs / "locked").mkdir(parents=True)
    (docs / "open.txt").write_text("The open file stays.\n")
    (docs / "locked" / "inside.txt").write_text("Ingested before the folder was locked.\n")
    settings = load_settings(open_dir / "home")
    assert ingest_paths(settings, "default", [docs]).added == 2
    _give_to_nobody(open_dir / "home")
    (docs / "locked").chmod(0)
    try:
        with unprivileged():
            report = ingest_paths(settings, "default", [docs])
    finally:
        (docs / "locked").chmod(0o755)
    assert report.failed == [
        {
            "path": str(docs / "locked"),
            "error": "cannot read folder: Permission denied",
            "error_code": "unreadable",
        }
    ]
    # What the locked folder holds is unknown, not gone: nothing of it is removed.
    assert (report.unchanged, report.removed) == (1, 0)
    assert sorted(d["source"] for d in list_documents(settings, "default")) == [
        "locked/inside.txt",
        "open.txt",
    ]
