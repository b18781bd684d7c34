"""`kbqa finetune`: training from JSON lines or a KB on a tiny checkpoint in the Hugging Face
layout, the held-out evaluation and its metric, and bad input."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from kbqa.chatglm import ChatGLM2, ChatGLM2Tokenizer
from kbqa.chatglm.load import save_pretrained
from kbqa.finetune_data import Reference, pairs_from_kb, read_pairs, split_holdout
from kbqa.finetune_eval import exact_match, rouge_l
from tests.answering_support import settings_for, shared_home
from tests.cli_support import kbqa

# The bundled SmolLM2 answers in this process: why one thread, see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {**ChatGLM2.from_config("tiny").config.to_dict(), "padded_vocab_size": 512}
PAIRS: list[dict[str, Any]] = [
    {"prompt": "你好", "response": "你好！有什么可以帮你的吗？"},
    {"prompt": "北京是中国的首都吗？", "response": "是的。", "history": [["问", "答"]]},
    {"prompt": "数字", "response": "0 1 2 3 4 5"},
    {"prompt": "round one?", "response": "questions and answers."},
]
FAST = ["--device", "cpu", "--steps", "3", "--batch", "2", "--pre-seq-len", "4", "--json"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, sp_model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("chatglm2-tiny")
    torch.manual_seed(0)
    save_pretrained(ChatGLM2.from_config(TINY), folder)
    (folder / "tokenizer.model").write_bytes(sp_model_path.read_bytes())
    return folder


def _write(path: Path, items: Sequence[object], extra: Sequence[str] = ()) -> Path:
    lines = [json.dumps(item, ensure_ascii=False) for item in items] + list(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_finetune_writes_a_checkpoint_the_loader_takes(base: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "d.jsonl", PAIRS, ["{not json", json.dumps({"prompt": "no answer"})])
    out = tmp_path / "out"
    code, stdout, stderr = kbqa(tmp_path, "finetune", str(data), "--out", str(out),
                                "--model", str(base), *FAST)  # fmt: skip
    assert code == 1, stderr  # trained, but lines were skipped
    summary = json.loads(stdout)
    assert summary["out"] == str(out) and summary["steps"] == 3 and summary["samples"] == 4
    assert summary["first_loss"] > 0 and summary["last_loss"] > 0 and summary["samples_per_s"] > 0
    assert [s["line"] for s in summary["skipped_lines"]] == [5, 6]
    assert f"{data}: line 5 skipped: not valid JSON" in stderr
    assert 'line 6 skipped: "response" must be a non-empty string' in stderr

    tuned = ChatGLM2.from_pretrained(base, ptuning_checkpoint=out)
    assert tuned.config.pre_seq_len == 4
    ids = torch.tensor([[64790 % 512, 5, 9, 17]])
    assert not torch.allclose(tuned(ids), ChatGLM2.from_pretrained(base)(ids), atol=1e-4)


def test_other_columns_and_a_held_out_split(base: Path, tmp_path: Path) -> None:
    rows = [{"content": p["prompt"], "summary": p["response"]} for p in PAIRS]
    data = _write(tmp_path / "adgen.jsonl", rows)
    code, stdout, stderr = kbqa(
        tmp_path, "finetune", str(data), "--out", str(tmp_path / "o"), "--model", str(base),
        "--prompt-column", "content", "--response-column", "summary", "--held-out", "0.25",
        "--max-tokens", "48", *FAST,
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["samples"] == 3 and summary["skipped_lines"] == []
    held = summary["held_out"]
    assert held["n"] == 1 and held["loss"] > 0 and 0 <= held["rouge_l"] <= 1

    # Text output names the checkpoint and how to serve it.
    code, stdout, _ = kbqa(tmp_path, "finetune", str(data), "--out", str(tmp_path / "o2"),
                           "--model", str(base), "--prompt-column", "content",
                           "--response-column", "summary", *FAST[:-1])  # fmt: skip
    assert code == 0 and "llm.chatglm2.ptuning_checkpoint" in stdout


def test_an_int4_base_on_the_cpu(base: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "d.jsonl", PAIRS)
    out = tmp_path / "out"
    code, stdout, stderr = kbqa(tmp_path, "finetune", str(data), "--out", str(out),
                                "--model", str(base), "--quantize", "int4", "--recompute",
                                "--micro-batch", "1", *FAST)  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["steps"] == 3
    tuned = ChatGLM2.from_pretrained(base, quantize="int4", ptuning_checkpoint=out)
    assert tuned.config.quantization_bit == 4 and tuned.config.pre_seq_len == 4


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "holds no training pairs"),
        ("bad_only", [], "holds no training pairs (1 malformed lines, the first: line 1"),
        ("ok", ["--model", "{tmp}/nowhere"], "does not exist"),
        ("ok", ["--quantize", "int3"], "--quantize must be int4, int8 or none"),
        ("ok", ["--from-kb", "ops"], "--from-kb and --questions go together"),
        ("missing", [], "cannot read training file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    base: Path, tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    data = tmp_path / "d.jsonl"
    if setup == "empty":
        data.write_text("\n")
    elif setup == "bad_only":
        data.write_text("[1, 2]\n")
    elif setup == "ok":
        _write(data, PAIRS)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--model" not in args:
        args += ["--model", str(base)]
    code, _, stderr = kbqa(tmp_path, "finetune", str(data), "--out", str(tmp_path / "o"),
                           *args, *FAST)  # fmt: skip
    assert code == 2, stderr
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_pairs_from_a_kb_hold_its_context_in_the_served_template(
    base: Path, tmp_path: Path
) -> None:
    refs = [
        Reference("INT4 量化版本需要多少显存", "INT4 版本约需 5.5 GB 显存。"),
        Reference("How long are Harbor snapshots kept?", "14 days."),
        Reference("红烧肉怎么做才好吃？", "不知道。"),  # nothing in the KB: no pair
    ]
    tok = ChatGLM2Tokenizer.from_pretrained(base)
    built = pairs_from_kb(settings_for(), "ops", refs, tok.count_tokens, sample_tokens=600)
    assert built.no_context == ["红烧肉怎么做才好吃？"]
    zh, en = built.examples
    assert "5.5 GB" in zh.prompt and zh.prompt.rstrip().endswith("INT4 量化版本需要多少显存")
    assert "[1]" in zh.prompt and zh.response == refs[0].answer
    assert "14 days" in en.prompt and "Harbor" in en.prompt

    questions = _write(tmp_path / "q.jsonl", [
        {"question": r.question, "answer": r.answer, "facts": ["x"]} for r in refs
    ] + [{"question": "no answer"}])  # fmt: skip
    code, stdout, stderr = kbqa(shared_home(), "finetune", "--from-kb", "ops", "--questions",
                                str(questions), "--out", str(tmp_path / "o"),
                                "--model", str(base), "--max-tokens", "600", *FAST)  # fmt: skip
    assert code == 1, stderr  # the line without an answer was skipped
    summary = json.loads(stdout)
    assert summary["samples"] == 2 and summary["no_context"] == 1
    assert "line 4 skipped" in stderr


def test_reading_and_splitting_pairs(tmp_path: Path) -> None:
    data = _write(
        tmp_path / "d.jsonl", PAIRS, ["", "# a comment", '{"prompt": "p", "response": 3}']
    )
    examples, bad = read_pairs(data)
    assert len(examples) == 4 and [b.line for b in bad] == [7]
    assert examples[1].history == (("问", "答"),)
    train, held = split_holdout(examples, 0.5, seed=0)
    assert len(train) == len(held) == 2 and set(train).isdisjoint(held)
    assert split_holdout(examples, 0.5, seed=0) == (train, held)


def test_rouge_l_and_exact_match() -> None:
    assert rouge_l("北京是首都", "北京是中国的首都") == pytest.approx(
        10 / 13
    )  # LCS 5 of 5 and 8 units
    assert rouge_l("The cat sat.", "the cat sat") == 1.0
    assert rouge_l("cat dog", "dog cat") == pytest.approx(0.5)
    assert rouge_l("", "anything") == 0.0 and rouge_l("，。", "") == 0.0
    assert exact_match("14 days.", "14 Days") and not exact_match("14 days", "15 days")
