"""A first ingest that stores nothing (interrupted, or every file failed) leaves no KB behind;
a KB that existed before keeps its contents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from held_embedding import HOLD_WORD

from kbqa.ingest.pipeline import ingest_paths
from kbqa.kb_admin import list_documents, list_kbs
from kbqa.settings import Settings, load_settings
from kbqa.storage.kb import KnowledgeBase
from tests.model_cache import link_models
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 600  # only ends a run that hangs; a passing one waits a few seconds


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "home")


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (folder / "blob.txt").write_bytes(b"\x00\x01\x02binary" * 50)
    return folder


def test_first_ingest_where_every_file_fails_leaves_no_kb(settings: Settings, broken: Path) -> None:
    report = ingest_paths(settings, "fresh", [broken])
    assert len(report.failed) == 2
    assert KnowledgeBase.list_names(settings.kbs_dir) == []


def test_a_kb_that_existed_keeps_its_contents_when_a_later_ingest_fails(
    settings: Settings, broken: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("The release is called Borealis.\n")
    ingest_paths(settings, "kept", [good])
    report = ingest_paths(settings, "kept", [broken])
    assert len(report.failed) == 2
    assert [d["source"] for d in list_documents(settings, "kept")] == ["good.txt"]


def _first_ingest_caught_midway(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A `kbqa ingest --json` into a new home, once it has created its KB (before the first file
    is read): the run is then between creating the KB and committing, and stays there, its
    embedding held (tests/held_embedding.py) until it is stopped."""
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "held.txt").write_text(f"{HOLD_WORD}: Aurora stores each KB in its own folder.\n")
    (folder / "other.txt").write_text("Aurora keeps its settings in config.toml.\n")
    home = link_models(tmp_path / "home")  # the embedding's ONNX export is made once per run
    kb_dir = load_settings(home).kbs_dir / "default"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO / "tests"),  # where the held_embedding plugin lives
        "KBQA_INGEST__LOADER_PLUGINS": "held_embedding",
        "KBQA_TEST_HELD": str(tmp_path / "held"),
    }
    command = [sys.executable, "-c", "from kbqa.cli import run; run()"]
    process = subprocess.Popen(
        [*command, "--home", str(home), "ingest", str(folder), "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background (`cmd &` in a script)
        # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )
    try:
        wait_for(
            lambda: kb_dir.exists() or process.poll() is not None,
            "the ingest creates its KB or ends",
            HANG_GUARD_S,
        )
        assert kb_dir.exists(), "the ingest ended before it created its KB"
    except AssertionError as e:
        process.kill()
        raise AssertionError(e, process.communicate()) from None
    return process, home


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_first_ingest_interrupted_by_sigint_leaves_no_kb(tmp_path: Path) -> None:
    process, home = _first_ingest_caught_midway(tmp_path)
    try:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=HANG_GUARD_S)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert json.loads(out) == {"kb": "default", "error": "interrupted"}
    assert err == "error: interrupted\n"
    settings = load_settings(home)
    assert KnowledgeBase.list_names(settings.kbs_dir) == []
    assert list(settings.kbs_dir.iterdir()) == []  # no marker left either


def test_first_ingest_killed_leaves_no_kb_once_anything_lists_kbs(tmp_path: Path) -> None:
    process, home = _first_ingest_caught_midway(tmp_path)
    process.kill()
    process.communicate(timeout=HANG_GUARD_S)
    settings = load_settings(home)
    assert KnowledgeBase.list_names(settings.kbs_dir) == ["default"]  # what SIGKILL leaves
    assert list_kbs(settings) == []
    assert KnowledgeBase.list_names(settings.kbs_dir) == []
    assert list(settings.kbs_dir.iterdir()) == []
