"""Build the configured chat model and tell the chain how many tokens its prompt may hold.

Each backend is imported only when chosen: the default pulls transformers, chatglm2 our own
PyTorch model, openai the optional `langchain-openai` package.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from langchain_core.language_models import BaseChatModel

from kbqa.errors import ConfigError
from kbqa.settings import Settings

TokenCounter = Callable[[str], int]

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def build_chat_model(settings: Settings) -> BaseChatModel:
    """The chat model of `settings.llm.backend`, with the generation defaults of `settings.llm`."""
    llm = settings.llm
    if llm.backend == "default":
        from kbqa.llm.default import DefaultChat

        return DefaultChat.from_settings(settings)
    if llm.backend == "chatglm2":
        if not llm.chatglm2.path:
            raise ConfigError(
                "llm.backend is chatglm2 but llm.chatglm2.path is empty "
                "(set it to a chatglm2-6b or chatglm2-6b-int4 folder)"
            )
        if llm.chatglm2.batching:
            from kbqa.llm.chatglm2_batched import BatchedChatGLM2Chat

            return BatchedChatGLM2Chat.from_settings(llm.chatglm2, llm)
        from kbqa.llm.chatglm2 import ChatGLM2Chat

        return ChatGLM2Chat.from_settings(llm.chatglm2, llm)
    try:
        from kbqa.llm.openai_chat import RemoteChat
    except ImportError as e:
        raise ConfigError(
            "llm.backend openai needs the openai extra: pip install 'kbqa[openai]'"
        ) from e
    return RemoteChat.from_settings(llm)


def generation_concurrency(settings: Settings) -> int:
    """How many generations a server runs at once: a remote backend batches concurrent
    requests itself, and so does the local ChatGLM2 with batching on (up to max_batch);
    otherwise a model inside the process decodes one stream at a time."""
    if settings.llm.backend == "openai":
        return settings.llm.openai.concurrency
    chatglm2 = settings.llm.chatglm2
    if settings.llm.backend == "chatglm2" and chatglm2.batching:
        return chatglm2.max_batch
    return 1


def estimate_tokens(text: str) -> int:
    """An upper estimate for tokenizers we cannot run here (a remote server's).

    Common tokenizers spend up to ~1.5 tokens on a CJK character and ~1 token on 3.5 characters
    of English or code; overestimating only packs a little less context.
    """
    cjk = len(_CJK.findall(text))
    return math.ceil(cjk * 1.5 + (len(text) - cjk) / 3.5)


def token_counter(model: BaseChatModel) -> TokenCounter:
    """Count tokens as `model` does: its own tokenizer where it runs here, else an estimate."""
    from kbqa.llm.default import DefaultChat

    if isinstance(model, DefaultChat):
        return model.get_num_tokens
    # ChatGLM2Chat carries its SentencePiece tokenizer; LangChain's own get_num_tokens would
    # fetch a GPT-2 tokenizer from the network, which is not there.
    count = getattr(getattr(model, "tokenizer", None), "count_tokens", None)
    if callable(count):
        return count
    return estimate_tokens


def context_window(model: BaseChatModel) -> int | None:
    """Positions the model reads at most (prompt + answer), where the backend says."""
    from kbqa.llm.default import DefaultChat

    if isinstance(model, DefaultChat):
        return model.context_window
    window = getattr(model, "context_window", None)  # ChatGLM2Chat and its batched form
    return window if isinstance(window, int) else None


def model_token_budget(settings: Settings, model: BaseChatModel) -> int:
    """Tokens the prompt (instructions, history, context and question) may use.

    `llm.context_tokens`, capped by the model's window less the room kept for the answer.
    """
    budget = settings.llm.context_tokens
    window = context_window(model)
    if window is not None:
        budget = min(budget, window - settings.llm.max_new_tokens)
    if budget < 64:
        raise ConfigError(
            f"llm.max_new_tokens {settings.llm.max_new_tokens} leaves only {budget} tokens of "
            f"the model's {window} for the prompt"
        )
    return budget
