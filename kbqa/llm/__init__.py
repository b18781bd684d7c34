"""LangChain chat-model adapters.

Importing this package is cheap: each adapter (and torch, LangChain, ...) is imported only when
its name is first used, e.g. `from kbqa.llm import ChatGLM2Chat`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kbqa.llm.errors import LLMUnavailable

if TYPE_CHECKING:
    from kbqa.llm.chatglm2 import ChatGLM2Chat

# Public name -> module that defines it.
_LAZY = {
    "ChatGLM2Chat": "kbqa.llm.chatglm2",
}

__all__ = ["ChatGLM2Chat", "LLMUnavailable"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


_LAZY["DefaultChat"] = "kbqa.llm.default"
_LAZY["build_chat_model"] = "kbqa.llm.factory"
__all__ += ["DefaultChat", "build_chat_model"]
