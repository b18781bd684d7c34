"""`llm.chatglm2.tensor_parallel` (and `kbqa serve --tensor-parallel N`): the settings build a
batched chat model whose engine runs over N ranks (here 2 gloo processes on the CPU) and answers
as the one-process model does; settings it cannot take are one clear error line, exit 2."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from kbqa.chatglm.parallel_engine import ParallelBatchEngine
from kbqa.llm.chatglm2 import ChatGLM2Chat
from kbqa.llm.chatglm2_batched import BatchedChatGLM2Chat
from kbqa.llm.errors import LLMUnavailable
from kbqa.llm.factory import build_chat_model, generation_concurrency
from kbqa.settings import ChatGLM2Settings, LLMSettings, load_settings
from tests.cli_support import kbqa

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_settings_serve_over_two_ranks_as_one_process_until_a_rank_dies(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    chatglm2: dict[str, Any] = {"path": str(tiny_checkpoint), "dtype": "fp32", "device": "cpu"}
    chatglm2["max_batch"] = 2
    llm: dict[str, Any] = {"backend": "chatglm2", "max_new_tokens": 6, "context_tokens": 300}
    settings = load_settings(
        home=tmp_path, overrides={"llm": {**llm, "chatglm2": {**chatglm2, "tensor_parallel": 2}}}
    )
    reference = ChatGLM2Chat.from_settings(ChatGLM2Settings(**chatglm2), LLMSettings(**llm))
    want = [reference.invoke(q).content for q in ("Hello", "你好", "What is a KB?")]
    chat = build_chat_model(settings)
    assert isinstance(chat, BatchedChatGLM2Chat)
    engine = chat.engine
    try:
        assert isinstance(engine, ParallelBatchEngine)
        assert generation_concurrency(settings) == 2
        got = [m.content for m in chat.batch(["Hello", "你好", "What is a KB?"])]
        assert got == want
        assert chat.ready
        # A rank that dies: the model is unavailable (HTTP 503), not a server bug (500).
        rank1 = engine.followers.processes[0]
        assert rank1.pid is not None
        os.kill(rank1.pid, signal.SIGKILL)
        rank1.join(timeout=60)
        with pytest.raises(LLMUnavailable, match=r"tensor-parallel rank 1 .* ended"):
            chat.invoke("Hello")
        assert not chat.ready
    finally:
        chat.close()


@pytest.mark.parametrize(
    ("llm", "message"),
    [
        ({"backend": "default"}, "--tensor-parallel 2 needs llm.backend chatglm2, not default"),
        (
            {"backend": "chatglm2", "chatglm2": {"path": "/x", "devices": ["cpu", "cpu"]}},
            "--tensor-parallel 2: tensor_parallel > 1 and devices (a layer split) exclude",
        ),
        (
            {"backend": "chatglm2", "chatglm2": {"path": "/x", "batching": False}},
            "--tensor-parallel 2: tensor_parallel > 1 needs batching = true",
        ),
    ],
)
def test_serve_refuses_tensor_parallel_it_cannot_run(
    tmp_path: Path, llm: dict[str, object], message: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(_toml(llm))
    code, _, err = kbqa(home, "serve", "--tensor-parallel", "2")
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def _toml(llm: dict[str, object]) -> str:
    """The [llm] and [llm.chatglm2] tables of a config.toml holding `llm`."""
    chatglm2 = llm.get("chatglm2", {})
    assert isinstance(chatglm2, dict)
    values = {
        key: "true" if v is True else "false" if v is False else repr(v).replace("'", '"')
        for key, v in chatglm2.items()
    }
    table = "".join(f"{key} = {value}\n" for key, value in values.items())
    return f'[llm]\nbackend = "{llm["backend"]}"\n\n[llm.chatglm2]\n{table}'
