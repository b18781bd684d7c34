"""`GET /healthz` tells a warming-up model (the batched ChatGLM2 compiling kernels and capturing
CUDA graphs before it serves) from a ready one; the server answers health checks meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from server_helpers import make_home, serve_with_model

from kbqa.chatglm import ChatGLM2, ChatGLM2Tokenizer
from kbqa.chatglm.batching import BatchEngine
from kbqa.chatglm.config import PRESETS
from kbqa.llm.chatglm2_batched import BatchedChatGLM2Chat
from tests.fake_chat import FakeChat
from tests.waiting import wait_for


def test_healthz_is_not_ready_until_the_engine_has_warmed_up(
    tmp_path_factory: pytest.TempPathFactory, sp_model_path: Path
) -> None:
    tokenizer = ChatGLM2Tokenizer(sp_model_path)
    torch.manual_seed(0)
    config = {**PRESETS["tiny"], "padded_vocab_size": tokenizer.vocab_size}
    model = ChatGLM2.from_config(config, device="cpu", dtype=torch.float32)
    # Not started yet: its thread would warm up first, as on a GPU, then serve.
    engine = BatchEngine(model, max_batch=2, max_seq=96, warm_up=True)
    chat = BatchedChatGLM2Chat(chatglm=model, tokenizer=tokenizer, engine=engine, max_tokens=4)
    server = serve_with_model(make_home(tmp_path_factory, "ready"), chat)
    try:
        with server.client() as client:
            health = client.get("/healthz").json()
            assert health["status"] == "ok" and health["ready"] is False
            engine.start()
            wait_for(lambda: client.get("/healthz").json()["ready"], "the engine reports ready")
            assert engine.ready
    finally:
        server.stop()
        engine.close()


def test_a_model_without_a_warm_up_is_ready_at_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = serve_with_model(make_home(tmp_path_factory, "ready_echo"), FakeChat())
    try:
        with server.client() as client:
            assert client.get("/healthz").json()["ready"] is True
    finally:
        server.stop()
