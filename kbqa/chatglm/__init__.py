"""ChatGLM2-6B in plain PyTorch (torch, sentencepiece and safetensors only)."""

from kbqa.chatglm.config import ChatGLM2Config
from kbqa.chatglm.model import ChatGLM2

__all__ = [
    "ChatGLM2",
    "ChatGLM2Config",
]
