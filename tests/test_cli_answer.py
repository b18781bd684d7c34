"""`kbqa ask` and `kbqa chat` through the real Typer app, on the shared KBs and model."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from kbqa.chain import REFUSAL, QAChain
from kbqa.retrieval import Retriever
from tests import cli_support
from tests.answering_support import settings_for, shared_home
from tests.fake_chat import FakeChat

# The bundled SmolLM2 answers in this process: why one thread, see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

HARBOR = "How long are Harbor backups kept?"


@pytest.fixture(autouse=True)
def short_answers(monkeypatch: pytest.MonkeyPatch) -> Path:
    home = shared_home()
    monkeypatch.setenv("KBQA_LLM__MAX_NEW_TOKENS", "24")
    monkeypatch.setenv("KBQA_RETRIEVAL__MIN_RELEVANCE", "0.45")
    return home


def kbqa(*args: str, input: str | None = None) -> tuple[int, str, str]:
    return cli_support.kbqa(shared_home(), *args, input=input)


def test_ask_json_refusal_is_the_design_shape() -> None:
    code, out, err = kbqa("ask", "红烧肉怎么做？", "--kb", "ops", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["refused"] is True and data["answer"] == REFUSAL["zh"] and data["sources"] == []
    assert list(data) == [
        "answer",
        "refused",
        "sources",
        "timings",
        "evidence_basis",
        "answer_mode",
        "generated",
    ]
    assert data["evidence_basis"] is None and data["answer_mode"] is None


@pytest.mark.slow
def test_ask_streams_the_answer_then_the_sources_when_piped() -> None:
    code, out, err = kbqa("ask", HARBOR, "--kb", "ops", "--kb", "hr", "-k", "2")
    assert code == 0, err
    answer, _, sources = out.partition("\nSources (« » ")
    assert answer.strip()
    lines = [line for line in sources.strip().splitlines()[1:] if not line.startswith("    «")]
    assert len(lines) == 2
    assert re.search(r"^    «.+»$", sources, re.MULTILINE)  # evidence, marked when piped
    assert lines[0].startswith("[1] harbor_backup_en.md › Harbor queue operations > Backups [ops]")
    assert "\x1b[" not in out  # plain text when piped


@pytest.mark.slow
def test_ask_with_history_file_follows_up(tmp_path: Path) -> None:
    history = tmp_path / "history.json"
    history.write_text(
        json.dumps([["Lumen-7B 在 FP16 下需要多少显存？", "约 14 GB。"]], ensure_ascii=False),
        encoding="utf-8",
    )
    code, out, err = kbqa("ask", "那 INT4 呢？", "--kb", "ops", "--history", str(history), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert any("5.5 GB" in s["text"] for s in data["sources"])


def test_questions_file_gives_one_json_line_each(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    lines = [
        {"question": "红烧肉怎么做？"},
        {"question": "What is the capital of Australia?", "history": []},
        {"question": "长" * 3000},
    ]
    questions.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    code, out, err = kbqa("ask", "--questions", str(questions), "--kb", "ops")
    assert code == 1, err  # one question failed, the others were answered
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r.get("refused") for r in rows[:2]] == [True, True]
    assert rows[1]["answer"] == REFUSAL["en"]
    assert "too long" in rows[2]["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ask", "x", "--kb", "nope"), "knowledge base nope does not exist"),
        (("ask", "x", "--kb", "a/b"), "invalid knowledge base name"),
        (("ask", "  ", "--kb", "ops"), "the question is empty"),
        (("ask",), "give either a QUESTION or --questions FILE"),
        (("ask", "x", "--history", "/no/such/file.json"), "cannot read history file"),
        (("chat", "--kb", "nope"), "knowledge base nope does not exist"),
    ],
)
def test_errors_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, out, err = kbqa(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[", "is not JSON"),
        ('{"q": 1}', "history must be a list"),
        ('[["q", "a", "extra"]]', "history item 1"),
    ],
)
def test_malformed_history_file_is_exit_2(tmp_path: Path, content: str, message: str) -> None:
    history = tmp_path / "h.json"
    history.write_text(content, encoding="utf-8")
    code, _, err = kbqa("ask", "x", "--kb", "ops", "--history", str(history))
    assert code == 2 and message in err


def test_malformed_questions_file_is_exit_2_before_any_answer(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "ok"}\n{"history": []}\n', encoding="utf-8")
    code, out, err = kbqa("ask", "--questions", str(questions), "--kb", "ops")
    assert code == 2 and "line 2" in err and out == ""


def test_chat_keeps_history_clears_and_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeChat(reply=lambda messages: "约 5.5 GB [1]")

    def chain_with_script(settings):  # type: ignore[no-untyped-def]
        return QAChain(settings, model, Retriever(settings), condense=False)

    monkeypatch.setattr(QAChain, "from_settings", staticmethod(chain_with_script))
    script = "Lumen-7B 在 FP16 下需要多少显存？\n那 INT4 呢？\nclear\n那 INT4 呢？\nexit\n"
    code, out, err = kbqa("chat", "--kb", "ops", input=script)
    assert code == 0, err
    assert "clear" in out and "exit" in out  # the help line
    assert "history cleared" in out
    with_history, without = model.calls[1], model.calls[2]
    assert len(with_history) == 3 and with_history[0].text.startswith("Lumen-7B")
    assert len(without) == 1  # cleared: the question alone


def test_ctrl_c_stops_the_answer_but_not_the_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeChat(
        reply=lambda messages: " ".join(["word"] * 40),
        on_token=lambda i: signal.raise_signal(signal.SIGINT) if i == 2 else None,
    )
    monkeypatch.setattr(
        QAChain,
        "from_settings",
        staticmethod(lambda s: QAChain(s, model, Retriever(s), condense=False)),
    )
    code, out, err = kbqa("chat", "--kb", "ops", input=f"{HARBOR}\n{HARBOR}\nexit\n")
    assert code == 0, err
    assert out.count("word word [stopped]") == 2  # stopped twice, the session went on
    assert len(model.calls) == 2


def test_chat_json_prints_answer_objects() -> None:
    code, out, err = kbqa("chat", "--kb", "ops", "--json", input="红烧肉怎么做？\nexit\n")
    assert code == 0, err
    assert json.loads(out.strip())["refused"] is True


def test_settings_overrides_reach_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[chain]\non_no_context = "chat"\n', encoding="utf-8")
    settings = settings_for()
    assert settings.chain.on_no_context == "refuse"
    # The chain the command builds from its settings, with a model that answers at once: what
    # is under test is the setting, which the chain reads, not what a model says.
    model = FakeChat(reply=lambda messages: "红烧肉要先焯水。")
    monkeypatch.setattr(
        QAChain, "from_settings", staticmethod(lambda s: QAChain(s, model, Retriever(s)))
    )
    code, out, err = kbqa("ask", "红烧肉怎么做？", "--kb", "ops", "--json", "--config", str(config))
    assert code == 0, err
    data = json.loads(out)
    assert data["refused"] is False and data["answer"].startswith("（以下回答不是来自知识库")
    assert data["answer"].endswith("红烧肉要先焯水。") and len(model.calls) == 1


def test_streamed_answer_is_printed_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeChat(reply=lambda messages: "\n\n Kept  for 14 days [1]. \n\n")
    monkeypatch.setattr(
        QAChain, "from_settings", staticmethod(lambda s: QAChain(s, model, Retriever(s)))
    )
    code, out, err = kbqa("ask", HARBOR, "--kb", "ops")
    assert code == 0, err
    assert out.startswith(
        "Kept  for 14 days [1].\n\nSources (« » supports the answer):\n[1] harbor_backup_en.md"
    )
    assert "    «Snapshots are kept for 14 days and then deleted automatically.»" in out
