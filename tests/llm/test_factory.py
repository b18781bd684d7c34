"""build_chat_model per backend, token counting and the prompt budget."""

from __future__ import annotations

import sys

import pytest

from kbqa.errors import ConfigError
from kbqa.llm.default import DefaultChat
from kbqa.llm.factory import (
    build_chat_model,
    estimate_tokens,
    model_token_budget,
    token_counter,
)
from kbqa.settings import load_settings


def settings(tmp_path, **llm):  # type: ignore[no-untyped-def]
    return load_settings(home=tmp_path, overrides={"llm": llm})


def test_default_backend_is_the_bundled_model_loaded_lazily(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = build_chat_model(settings(tmp_path, max_new_tokens=33, temperature=0.5))
    assert isinstance(model, DefaultChat)
    assert model.max_new_tokens == 33 and model.temperature == 0.5
    assert model.cache_dir == str(tmp_path.resolve() / "cache")


def test_chatglm2_without_a_path_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"llm\.chatglm2\.path is empty"):
        build_chat_model(settings(tmp_path, backend="chatglm2"))


def test_openai_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("langchain_openai")
    s = load_settings(
        home=tmp_path,
        overrides={
            "llm": {
                "backend": "openai",
                "max_new_tokens": 77,
                "openai": {"base_url": "http://10.0.0.5:9000/v1", "model": "glm", "timeout_s": 5},
            }
        },
    )
    model = build_chat_model(s)
    assert model.openai_api_base == "http://10.0.0.5:9000/v1"  # type: ignore[attr-defined]
    assert model.model_name == "glm" and model.max_tokens == 77  # type: ignore[attr-defined]
    assert model.request_timeout == 5  # type: ignore[attr-defined]
    assert token_counter(model) is estimate_tokens
    assert model_token_budget(s, model) == s.llm.context_tokens


def test_openai_backend_without_the_extra_names_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "langchain_openai", None)
    monkeypatch.delitem(sys.modules, "kbqa.llm.openai_chat", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'kbqa\[openai\]'"):
        build_chat_model(settings(tmp_path, backend="openai"))


def test_estimate_errs_on_the_high_side() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("知识库") == 5
    assert estimate_tokens("hello world") == 4


def test_budget_leaves_room_for_the_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class Windowed(DefaultChat):
        @property
        def context_window(self) -> int:
            return 1000

    s = settings(tmp_path, context_tokens=2048, max_new_tokens=200)
    assert model_token_budget(s, Windowed()) == 800
    with pytest.raises(ConfigError, match="leaves only"):
        model_token_budget(settings(tmp_path, max_new_tokens=990), Windowed())
