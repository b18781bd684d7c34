"""ChatGLM2-6B in plain PyTorch (torch, sentencepiece and safetensors only)."""

from kbqa.chatglm.chatglm2 import ChatGLM2
from kbqa.chatglm.config import ChatGLM2Config

__all__ = [
    "ChatGLM2",
    "ChatGLM2Config",
]

# Tokenizer, chat prompt and streaming text (tokenizer.py, streaming.py).
from kbqa.chatglm.streaming import StreamDecoder, stream_text
from kbqa.chatglm.tokenizer import ChatGLM2Tokenizer, PromptTooLong

__all__ += ["ChatGLM2Tokenizer", "PromptTooLong", "StreamDecoder", "stream_text"]
