"""A P-tuned tiny ChatGLM2 served for real, for the HTTP and browser tests of serving it.

A random tiny ChatGLM2 saved in the Hugging Face layout (with the test session's
sentencepiece model), a P-tuning checkpoint that `kbqa finetune` trains on it, and a real
server on loopback whose settings name both (`llm.chatglm2.ptuning_checkpoint`), so the model
goes through the same loading path as `kbqa serve`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.load import save_pretrained
from kbqa.cli import app
from kbqa.server.app import create_app
from tests.server.server_helpers import LiveServer, make_home, server_settings, start_server

TINY = {**ChatGLM2.from_config("tiny").config.to_dict(), "padded_vocab_size": 512}
CHECKPOINT = "adgen"
SERVED_NAME = f"chatglm2-tiny-pt-{CHECKPOINT}"  # `<base folder>-pt-<P-tuning folder>`
PAIRS = [
    {"prompt": "你好", "response": "你好！有什么可以帮你的吗？"},
    {"prompt": "数字", "response": "0 1 2 3 4 5"},
]


def tiny_base(folder: Path, sp_model_path: Path) -> Path:
    torch.manual_seed(0)
    save_pretrained(ChatGLM2.from_config(TINY), folder)
    (folder / "tokenizer.model").write_bytes(sp_model_path.read_bytes())
    return folder


def finetuned(base: Path, work: Path) -> Path:
    """`kbqa finetune` on the tiny base: the checkpoint folder work/CHECKPOINT."""
    data = work / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p, ensure_ascii=False) for p in PAIRS), "utf-8")
    out = work / CHECKPOINT
    args = ["--home", str(work / "home"), "finetune", str(data), "--out", str(out),
            "--model", str(base), "--device", "cpu", "--steps", "2", "--batch", "2",
            "--pre-seq-len", "4", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return out


def serve_ptuned(tmp_path_factory: pytest.TempPathFactory, sp_model_path: Path) -> LiveServer:
    """A server whose ChatGLM2 backend is the tiny base with a fresh P-tuning checkpoint.

    Its settings carry `base` and `checkpoint` under llm.chatglm2 (path, ptuning_checkpoint).
    """
    work = tmp_path_factory.mktemp("ptuned")
    base = tiny_base(work / "chatglm2-tiny", sp_model_path)
    checkpoint = finetuned(base, work)
    chatglm2 = {"path": str(base), "ptuning_checkpoint": str(checkpoint), "device": "cpu",
                "dtype": "fp32", "batching": False}  # fmt: skip
    llm = {"backend": "chatglm2", "chatglm2": chatglm2}
    settings = server_settings(make_home(tmp_path_factory, "ptuned-home"), llm, "generate")
    return start_server(create_app(settings), settings)
