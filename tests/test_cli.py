"""The `kbqa` command line: JSON contracts, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_support import kbqa
from tests.model_cache import link_models


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text(
        "# Aurora 指南\n\n## 显存\n\nINT4 量化后显存需求约 6 GB，FP16 需要 13 GB。\n",
        encoding="utf-8",
    )
    (folder / "gbk.txt").write_bytes(
        "部署时请使用 python3.9 以上版本，驱动 450.80.02。".encode("gbk")
    )
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (folder / "tool.exe").write_bytes(b"MZ")
    return folder


def test_ingest_json_contract_and_partial_failure_exit(tmp_path: Path, docs: Path) -> None:
    code, out, _ = kbqa(tmp_path / "home", "ingest", str(docs), "--json")
    report = json.loads(out)
    assert code == 1  # broken.pdf failed, the rest committed
    assert set(report) == {
        "kb",
        "added",
        "updated",
        "unchanged",
        "removed",
        "failed",
        "skipped",
        "chunks",
        "seconds",
    }
    assert report["added"] == 2
    assert [f["path"] for f in report["failed"]] == [str(docs / "broken.pdf")]
    assert report["skipped"][0]["path"] == str(docs / "tool.exe")
    code, out, _ = kbqa(tmp_path / "home", "docs", "list", "--json")
    documents = json.loads(out)["documents"]
    assert code == 0
    assert {d["source"] for d in documents} == {"guide.md", "gbk.txt"}
    assert set(documents[0]) >= {"doc_id", "source", "chunks"}


def test_gbk_text_is_decoded_not_garbled(tmp_path: Path, docs: Path) -> None:
    kbqa(tmp_path / "home", "ingest", str(docs / "gbk.txt"))
    db = next((tmp_path / "home" / "kbs" / "default").glob("*.sqlite*"))
    with sqlite3.connect(db) as conn:
        texts = [row[0] for row in conn.execute("SELECT text FROM chunks")]
    assert any("驱动 450.80.02" in t for t in texts)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "/no/such/folder"], "path not found"),
        (["ingest", "{docs}", "--kb", "bad/name"], "invalid knowledge base name"),
        (["ingest", "{docs}", "--kb", ".hidden"], "invalid knowledge base name"),
        (["ingest", "{docs}", "--backend", "sqlite"], "unknown backend"),
        (["docs", "list", "--kb", "nope"], "nope"),
        (["kb", "check", "--kb", "a b"], "invalid knowledge base name"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, docs: Path, args: list[str], message: str
) -> None:
    code, out, err = kbqa(tmp_path / "home", *[a.replace("{docs}", str(docs)) for a in args])
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = kbqa(tmp_path / "home", "ingest", str(tmp_path / "empty"))
    assert code == 2
    assert "empty" in err


def test_changed_embedding_is_refused(tmp_path: Path, docs: Path) -> None:
    kbqa(tmp_path / "home", "ingest", str(docs / "guide.md"), "--kb", "k1")
    code, _, err = kbqa(
        tmp_path / "home", "ingest", str(docs / "guide.md"), "--kb", "k1", "--embedding", "other"
    )
    assert code == 2
    assert "cannot change" in err


def test_kb_check_detects_hand_edit_and_kb_list_delete(tmp_path: Path, docs: Path) -> None:
    home = tmp_path / "home"
    kbqa(home, "ingest", str(docs / "guide.md"), "--kb", "知识库")
    assert kbqa(home, "kb", "check", "--kb", "知识库")[0] == 0
    code, out, _ = kbqa(home, "kb", "list", "--json")
    assert [k["name"] for k in json.loads(out)["kbs"]] == ["知识库"]
    db = next((home / "kbs" / "知识库").glob("*.sqlite*"))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE chunks SET text = text || ' tampered'")
    code, out, _ = kbqa(home, "kb", "check", "--kb", "知识库", "--json")
    assert code == 1
    assert json.loads(out)["healthy"] is False
    assert kbqa(home, "kb", "delete", "知识库", "--yes")[0] == 0
    assert json.loads(kbqa(home, "kb", "list", "--json")[1])["kbs"] == []


def test_docs_remove_unknown_is_an_error(tmp_path: Path, docs: Path) -> None:
    kbqa(tmp_path / "home", "ingest", str(docs / "guide.md"))
    code, _, err = kbqa(tmp_path / "home", "docs", "remove", "deadbeef")
    assert code == 2
    assert "no document" in err


def test_config_show_reflects_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[retrieval]\ntop_k = 7\n[server]\napi_key = "s3cret"\n')
    monkeypatch.setenv("KBQA_LLM__BACKEND", "chatglm2")
    code, out, _ = kbqa(home, "config", "show", "--json")
    shown = json.loads(out)
    assert code == 0
    assert shown["retrieval"]["top_k"] == 7
    assert shown["llm"]["backend"] == "chatglm2"
    assert shown["server"]["api_key"] == "***"


@pytest.mark.parametrize(
    "content",
    ["[retrieval\ntop_k = 1\n", "[retrieval]\ntop_k = 0\n", "[nonsense]\nx = 1\n"],
)
def test_bad_config_is_a_one_line_usage_error(tmp_path: Path, content: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(content)
    code, _, err = kbqa(home, "config", "show")
    assert code == 2
    assert err.startswith("error: ")


@pytest.mark.parametrize(
    "args",
    [
        ("ingest", "{tmp}"),
        ("search", "x"),
        ("ask", "x"),
        ("chat",),
        ("kb", "list"),
        ("kb", "check"),
        ("kb", "delete", "gone", "--yes"),
        ("kb", "migrate", "--to", "copy"),
        ("docs", "list"),
        ("docs", "remove", "x"),
        ("config", "show"),
        ("eval", "{tmp}/questions.jsonl"),
        ("finetune", "{tmp}/data.jsonl", "--out", "{tmp}/out"),
        ("keys", "list"),
        ("serve",),
        ("mcp",),
    ],
)
def test_every_command_reports_a_bad_setting_as_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Every command loads its settings inside the shared frame (`ask` and `chat` once said
    "unexpected SettingsError" and exited 1)."""
    config = tmp_path / "bad.toml"
    config.write_text('[llm]\nbackend = "nope"\n')
    argv = [arg.format(tmp=tmp_path) for arg in args]
    code, out, err = kbqa(tmp_path / "home", *argv, "--config", str(config))
    assert code == 2, err
    assert err.startswith("error: invalid setting llm.backend") and err.count("\n") == 1
    assert out == ""


@pytest.mark.parametrize(
    ("args", "broken"),
    [(("docs", "list"), "list_documents"), (("kb", "check", "--json"), "check_kb")],
)
def test_a_bug_in_any_command_is_one_line_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], broken: str
) -> None:
    from kbqa import kb_admin

    def bug(*args: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(kb_admin, broken, bug)
    code, out, err = kbqa(tmp_path / "home", *args)
    assert code == 1
    assert err == "error: unexpected ZeroDivisionError: division by zero\n"
    assert out == ""


def test_console_script_runs_without_traceback(tmp_path: Path, docs: Path) -> None:
    home = link_models(tmp_path / "home")  # the embedding's ONNX export is made once per run
    env = {**os.environ, "KBQA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    kbqa_bin = Path(sys.executable).parent / "kbqa"
    done = subprocess.run(
        [str(kbqa_bin), "ingest", str(docs), "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["added"] == 2
    assert "Traceback" not in done.stderr
    bad = subprocess.run(
        [str(kbqa_bin), "docs", "list", "--kb", "missing"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "x", "--bogus"], "No such option: --bogus"),
        (["ingest"], "Missing argument"),
        (["kb", "delete"], "either as NAME or as --kb NAME"),
    ],
)
def test_console_script_usage_errors_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    kbqa_bin = Path(sys.executable).parent / "kbqa"
    env = {**os.environ, "KBQA_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(kbqa_bin), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert message in done.stderr


def test_console_script_shows_a_group_s_help_once(tmp_path: Path) -> None:
    kbqa_bin = Path(sys.executable).parent / "kbqa"
    env = {**os.environ, "KBQA_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(kbqa_bin), "kb"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout.count("Usage: kbqa kb") == 1
    assert "delete" in done.stdout and done.stderr == ""


def test_kb_delete_takes_kb_option(tmp_path: Path, docs: Path) -> None:
    home = tmp_path / "home"
    kbqa(home, "ingest", str(docs / "guide.md"), "--kb", "gone")
    code, out, _ = kbqa(home, "kb", "delete", "--kb", "gone", "--yes", "--json")
    assert code == 0
    assert json.loads(out) == {"deleted": "gone"}
    assert json.loads(kbqa(home, "kb", "list", "--json")[1])["kbs"] == []


@pytest.mark.parametrize("command", [["search", "x"], ["ask", "x"], ["chat"], ["eval", "q.jsonl"]])
@pytest.mark.parametrize(
    ("k", "bound"), [("0", "greater than or equal to 1"), ("101", "less than or equal to 100")]
)
def test_every_top_k_option_takes_1_to_100(
    tmp_path: Path, command: list[str], k: str, bound: str
) -> None:
    code, _, err = kbqa(tmp_path / "home", *command, "-k", k)
    assert code == 2
    words = " ".join(err.replace("│", " ").split())  # rich wraps the message in a box
    assert f"Invalid value for '-k' / '--top-k': Input should be {bound}" in words


def test_search_shows_5_hits_without_k_whatever_retrieval_top_k_is(tmp_path: Path) -> None:
    home, folder = tmp_path / "home", tmp_path / "animals"
    folder.mkdir()
    for animal in ["cats", "dogs", "owls", "foxes", "bees", "eels", "yaks"]:
        (folder / f"{animal}.md").write_text(f"# {animal}\n\nThe {animal} live near the lake.\n")
    assert kbqa(home, "ingest", str(folder))[0] == 0
    (home / "config.toml").write_text("[retrieval]\ntop_k = 2\n")

    def hits(*k: str) -> int:
        code, out, _ = kbqa(home, "search", "who lives near the lake", "--json", *k)
        assert code == 0
        return len(json.loads(out)["results"])

    assert hits() == 5  # search's own default, as POST /v1/kbs/{kb}/search has
    assert hits("-k", "3") == 3
