"""Bounded work per file: hostile files fail alone, with an error code and the setting named,
and the rest of the run is ingested (kbqa.ingest.limits, kbqa.ingest.isolation)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_files import CRASH_JSON, STUCK_JSON, blank_pdf, docx_bomb, png_bomb
from typer.testing import CliRunner

from kbqa.cli import app
from kbqa.ingest import isolation
from kbqa.ingest.isolation import FileParser, ParseStopped, Stop, WorkerPool
from kbqa.ingest.loaders import load_document
from kbqa.ingest.pipeline import ingest_paths
from kbqa.ingest.types import LoadError, LoadOptions, ParseLimits
from kbqa.settings import load_settings
from tests.waiting import HANG_GUARD_S, wait_for

PLUGIN = {"loader_plugins": ["stuck_loader"]}


def test_hostile_files_fail_alone_and_the_rest_is_ingested(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bomb.docx").write_bytes(docx_bomb(100))
    (docs / "bomb.png").write_bytes(png_bomb())
    (docs / "pages.pdf").write_bytes(blank_pdf(10_000))
    (docs / "stuck.json").write_bytes(STUCK_JSON)
    (docs / "crash.json").write_bytes(CRASH_JSON)
    (docs / "fine.json").write_text('{"colour": "The widget is teal."}', encoding="utf-8")
    (docs / "notes.md").write_text("# Notes\n\nThe bakery opens at six.\n", encoding="utf-8")
    assert (docs / "bomb.docx").stat().st_size < 1_000_000

    settings = load_settings(
        tmp_path / "home", overrides={"ingest": PLUGIN | {"parse_timeout_s": 8}}
    )
    report = ingest_paths(settings, "hostile", [docs])

    failed = {Path(f["path"]).name: f for f in report.failed}
    assert {name: f["error_code"] for name, f in failed.items()} == {
        "bomb.docx": "too_large",
        "bomb.png": "too_large",
        "pages.pdf": "too_large",
        "stuck.json": "parse_timeout",
        "crash.json": "parse_crashed",
    }
    assert "(ingest.max_compression_ratio)" in failed["bomb.docx"]["error"]
    assert "(ingest.max_image_pixels)" in failed["bomb.png"]["error"]
    assert failed["pages.pdf"]["error"] == (
        "has 10000 pages, over the 2000 page limit (ingest.max_pages)"
    )
    assert failed["stuck.json"]["error"] == (
        "parsing took longer than 8 s (ingest.parse_timeout_s); stopped"
    )
    assert "signal SIGSEGV" in failed["crash.json"]["error"]
    assert all("\n" not in f["error"] for f in report.failed)
    assert report.added == 2 and report.chunks >= 2


def test_a_parse_over_the_memory_cap_fails_with_parse_memory(tmp_path: Path) -> None:
    # Within the zip limits (raised here), but python-docx's tree of 40 MB of XML needs far
    # more than 256 MB: the worker's address-space cap stops it, not the machine's memory.
    path = tmp_path / "big.docx"
    path.write_bytes(docx_bomb(40))
    limits = ParseLimits(max_unpacked_mb=1000, max_compression_ratio=1000)
    with WorkerPool(memory_mb=256) as pool, pytest.raises(LoadError) as caught:
        pool.parse(path, max_bytes=2**30, options=LoadOptions(limits=limits), timeout_s=300)
    assert caught.value.code == "parse_memory"
    assert str(caught.value) == (
        "parsing needed more than 256 MB of memory (ingest.parse_memory_mb); stopped"
    )


def test_unpacked_size_is_judged_from_the_central_directory(tmp_path: Path) -> None:
    path = tmp_path / "large.docx"
    path.write_bytes(docx_bomb(3))
    options = LoadOptions(limits=ParseLimits(max_unpacked_mb=2, max_compression_ratio=1000))
    with pytest.raises(LoadError) as caught:
        load_document(path, max_bytes=2**30, options=options)
    assert caught.value.code == "too_large"
    assert str(caught.value).endswith("over the 2 MB limit (ingest.max_unpacked_mb)")


def test_a_stop_ends_a_parse_in_progress_and_refuses_the_next(tmp_path: Path) -> None:
    stuck = tmp_path / "stuck.json"
    stuck.write_bytes(STUCK_JSON)
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text", encoding="utf-8")
    settings = load_settings(tmp_path / "home", overrides={"ingest": PLUGIN})
    stop = Stop(timeout_s=2)  # an upload job's deadline; the parse's own is 300 s
    with FileParser.for_run(settings, stop=stop) as parser:
        with pytest.raises(ParseStopped) as caught:
            parser.load(stuck, max_bytes=2**20, options=LoadOptions())
        assert caught.value.reason == "deadline"
        with pytest.raises(ParseStopped):
            parser.load(notes, max_bytes=2**20, options=LoadOptions())


def test_cli_ingest_reports_a_bomb_in_failed_and_exits_1(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bomb.docx").write_bytes(docx_bomb(100))
    (docs / "notes.md").write_text("# Notes\n\nThe bakery opens at six.\n", encoding="utf-8")
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path / "home"), "ingest", str(docs), "--json"]
    )
    assert result.exit_code == 1
    output = json.loads(result.stdout)
    assert output["added"] == 1
    assert [(Path(f["path"]).name, f["error_code"]) for f in output["failed"]] == [
        ("bomb.docx", "too_large")
    ]


def test_a_missing_loader_plugin_is_one_clear_settings_error(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("text", encoding="utf-8")
    home = tmp_path / "home"
    result = CliRunner().invoke(
        app,
        ["--home", str(home), "ingest", str(docs)],
        env={"KBQA_INGEST__LOADER_PLUGINS": "no_such_plugin_module"},
    )
    assert result.exit_code == 2
    assert "cannot import loader plugin no_such_plugin_module (ingest.loader_plugins)" in (
        result.stderr
    )


def test_markdown_lines_cost_their_length_not_its_square(tmp_path: Path) -> None:
    # Markdown is parsed in the ingesting process, without a deadline: each of these lines
    # took minutes to hours (their length squared) before the heading patterns were made
    # linear. Parsed here in a worker with a generous deadline, so a regression fails.
    lines = [
        b"# a" + b" " * 1_000_000 + b"b",  # spaces inside an ATX heading
        b"# " + b"[" * 1_000_000,  # link openers in a heading
        b"## " + b"[a](" * 250_000,  # link targets never closed
        b"| " + b"[" * 1_000_000 + b" | b |\n|---|---|",  # a table cell
    ]
    path = tmp_path / "hostile.md"
    path.write_bytes(b"\n\n".join(lines) + b"\n\nThe end.\n")
    with WorkerPool(memory_mb=1024) as pool:
        sections = pool.parse(path, max_bytes=2**30, options=LoadOptions(), timeout_s=120)
    assert sections[-1].text.endswith("The end.")


@pytest.mark.parametrize("name", ["bomb.xlsx", "bomb.pptx"])
def test_every_zip_based_format_is_checked_before_its_parser(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(docx_bomb(20))  # the same archive: the check reads only its directory
    with pytest.raises(LoadError) as caught:
        load_document(path, max_bytes=2**30)
    assert caught.value.code == "too_large"
    assert "(ingest.max_compression_ratio)" in str(caught.value)


def test_a_worker_left_large_is_not_kept_warm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fine.json"
    path.write_text('{"colour": "teal"}', encoding="utf-8")

    def workers() -> set[int | None]:
        return {p.pid for p in multiprocessing.active_children() if p.name == "kbqa-parse"}

    with WorkerPool(memory_mb=512) as pool:
        before = workers()
        pool.parse(path, max_bytes=2**20, options=LoadOptions(), timeout_s=60)
        warm = workers() - before
        assert len(warm) == 1  # kept for the next file
        monkeypatch.setattr(isolation, "RECYCLE_RSS_KB", 0)  # every worker now counts as large
        pool.parse(path, max_bytes=2**20, options=LoadOptions(), timeout_s=60)
        assert not workers() & warm
        pool.parse(path, max_bytes=2**20, options=LoadOptions(), timeout_s=60)
        assert workers() - before == set()


def test_a_killed_ingest_leaves_no_parse_worker_behind(tmp_path: Path) -> None:
    # kill -9 of a process ingesting while its worker is stuck: the fork server exits with it
    # and the kernel kills the worker (nothing may keep parsing, or hold memory, for nobody).
    stuck = tmp_path / "stuck.json"
    stuck.write_bytes(STUCK_JSON)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kbqa.ingest.isolation import WorkerPool\n"
        "from kbqa.ingest.types import LoadOptions\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(memory_mb=512, plugins=['stuck_loader'])\n"
        "    pool.parse(Path(sys.argv[1]), max_bytes=2**20, options=LoadOptions(), timeout_s=600)\n"
    )
    environment = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}  # stuck_loader
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(stuck)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        family = wait_for_worker(process.pid)
    finally:
        process.kill()
        process.wait()
    wait_for(lambda: all(gone(pid) for pid in family), "the parse workers exit with the process")


def processes() -> dict[int, tuple[int, str]]:
    """Each process's parent and state, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(entry.name)] = (int(fields[1]), fields[0])
    return found


def wait_for_worker(pid: int) -> set[int]:
    """The processes under `pid` once one of them (a parse worker) is a grandchild."""

    def family() -> set[int]:
        table = processes()
        children = {p for p, (parent, _) in table.items() if parent == pid}
        workers = {p for p, (parent, _) in table.items() if parent in children}
        return children | workers if workers else set()

    return wait_for(family, "a parse worker starts", timeout=180)


def gone(pid: int) -> bool:
    state = processes().get(pid)
    return state is None or state[1] == "Z"


def test_a_worker_whose_parent_goes_away_mid_reply_exits_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C ends `kbqa ingest` while a worker is parsing: its reply then meets a closed pipe,
    # which must end the worker without a traceback on the user's terminal.
    text = tmp_path / "long.txt"
    text.write_text("Aurora keeps each knowledge base in its own folder.\n" * 20_000)
    worker = isolation._Worker(memory_mb=512, plugins=())
    worker.conn.send((str(text), 10_000_000, LoadOptions()))
    worker.conn.close()
    worker.process.join(HANG_GUARD_S)
    assert worker.process.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err
