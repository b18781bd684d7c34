"""The tiny random ChatGLM2 that the ChatGLM2 chat-model tests share.

The tiny preset is used with its vocabulary cut to the SentencePiece model trained at test
time: with the preset's 65,024 rows a random model would mostly pick ids that no piece of a
500-piece tokenizer stands for, and so answer with empty text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kbqa.chatglm import ChatGLM2, ChatGLM2Tokenizer
from kbqa.chatglm.config import PRESETS
from kbqa.chatglm.load import save_pretrained


@pytest.fixture(scope="session")
def tiny_parts(sp_model_path: Path) -> tuple[ChatGLM2, ChatGLM2Tokenizer]:
    """The model and its tokenizer, made once: the tests read the weights, never change them."""
    tokenizer = ChatGLM2Tokenizer(sp_model_path)
    torch.manual_seed(0)
    config = {**PRESETS["tiny"], "padded_vocab_size": tokenizer.vocab_size}
    return ChatGLM2.from_config(config, device="cpu", dtype=torch.float32), tokenizer


@pytest.fixture
def tiny_checkpoint(
    tmp_path: Path, tiny_parts: tuple[ChatGLM2, ChatGLM2Tokenizer], sp_model_path: Path
) -> Path:
    """The tiny model saved as a Hugging Face checkpoint folder, as settings name one."""
    folder = tmp_path / "chatglm2-tiny"
    save_pretrained(tiny_parts[0], folder)
    (folder / "tokenizer.model").write_bytes(sp_model_path.read_bytes())
    return folder
