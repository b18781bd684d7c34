"""The QA chain over real knowledge bases (real FAISS + SQLite, the bundled MiniLM embedding).

Most tests drive the chain with FakeChat, which records the prompt it is given, so what
reaches the model can be checked exactly; one test per path runs the real SmolLM2.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kbqa.answer import DoneEvent, SourcesEvent, TokenEvent
from kbqa.chain import REFUSAL, QAChain
from kbqa.errors import ConfigError, InputTooLong, NotFound, UsageError
from kbqa.llm.default import DefaultChat
from kbqa.llm.factory import estimate_tokens
from kbqa.retrieval import Retriever
from kbqa.settings import Settings
from kbqa.storage.kb import KnowledgeBase
from tests.answering_support import prompt_text, settings_for, shared_home
from tests.fake_chat import FakeChat

# The bundled SmolLM2 answers in this process: why one thread, see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FP16_QUESTION = "Lumen-7B 在 FP16 下需要多少显存？"


def make_chain(
    settings: Settings | None = None, model: FakeChat | None = None, condense: bool = False
) -> QAChain:
    """A chain over the shared KBs; follow-ups joined for search, as with the bundled model."""
    settings = settings or settings_for()
    return QAChain(settings, model or FakeChat(), Retriever(settings), condense=condense)


def passages(prompt: str) -> list[tuple[int, str]]:
    """([n], source) of each passage in a prompt built from the bundled template."""
    return [(int(n), src) for n, src in re.findall(r"^\[(\d+)\] (\S+)", prompt, re.MULTILINE)]


# -- refusal and the no-context setting ----------------------------------------------------


@pytest.mark.parametrize(
    ("question", "lang"),
    [("红烧肉怎么做？", "zh"), ("Who won the 2018 FIFA World Cup?", "en")],
)
def test_nothing_relevant_is_refused_without_calling_the_model(question: str, lang: str) -> None:
    chain = make_chain(model=FakeChat(fail=True))
    answer = chain.ask(question, ["ops", "hr"])
    assert answer.refused
    assert answer.answer == REFUSAL[lang]
    assert answer.sources == []
    assert answer.timings.tokens_per_s == 0.0


def test_on_no_context_chat_answers_plainly_with_a_label() -> None:
    model = FakeChat(reply=lambda messages: "Slow-braise the pork.")
    chain = make_chain(settings_for(chain={"on_no_context": "chat"}), model)
    answer = chain.ask("How do I cook braised pork belly?", ["ops"])
    assert not answer.refused and answer.sources == []
    assert answer.answer.startswith("(Not from the knowledge base")
    assert answer.answer.endswith("Slow-braise the pork.")
    assert prompt_text(model.calls[0]) == "How do I cook braised pork belly?"  # no passages
    zh = chain.ask("红烧肉怎么做？", ["ops"])
    assert zh.answer.startswith("（以下回答不是来自知识库")


# -- what the model is given ---------------------------------------------------------------


def test_sources_are_exactly_the_numbered_passages_in_the_prompt() -> None:
    model = FakeChat()
    answer = make_chain(model=model).ask("How long are Harbor backups kept?", ["ops", "hr"])
    prompt = prompt_text(model.calls[0])
    assert [s.index for s in answer.sources] == list(range(1, len(answer.sources) + 1))
    assert passages(prompt) == [(s.index, s.source) for s in answer.sources]
    for source in answer.sources:
        assert source.text.strip() in prompt
        assert source.kb == "ops"
    assert "kept for 14 days" in answer.sources[0].text
    scores = [s.score for s in answer.sources]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.45


def test_several_kbs_are_searched_and_merged() -> None:
    chain = make_chain()
    leave = chain.ask("年假可以顺延吗？", ["ops", "hr"])
    assert [s.kb for s in leave.sources] == ["hr"]
    assert "顺延" in leave.sources[0].text
    harbor = chain.ask("How long are Harbor backups kept?", ["hr", "ops"])
    assert {s.kb for s in harbor.sources} == {"ops"}
    one = chain.ask("How long are Harbor backups kept?", "ops")  # a single name as a string
    assert [s.chunk_id for s in one.sources] == [s.chunk_id for s in harbor.sources]


def test_the_question_is_embedded_once_per_distinct_model(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for()
    # A third KB whose embedding is the same MiniLM named by its directory: another model name.
    from kbqa.storage.embeddings import default_model_dir, get_embedder

    model_dir = str(default_model_dir())
    if "ops2" not in KnowledgeBase.list_names(settings.kbs_dir):
        from kbqa.ingest.pipeline import ingest_paths

        ingest_paths(
            settings, "ops2", [Path(__file__).parent / "data/answering/ops"], embedding=model_dir
        )
    asked: list[str] = []
    original = get_embedder

    def spy(name: str, device: str = "cpu", batch_size: int = 32):  # type: ignore[no-untyped-def]
        asked.append(name)
        return original(name, device, batch_size)

    monkeypatch.setattr("kbqa.retrieval.get_embedder", spy)
    answer = make_chain(settings).ask("How long are Harbor backups kept?", ["ops", "hr", "ops2"])
    assert sorted(asked) == sorted(["default", model_dir])
    assert {s.kb for s in answer.sources} >= {"ops", "ops2"}


def test_follow_up_retrieves_with_the_history() -> None:
    model = FakeChat()
    history = [[FP16_QUESTION, "大约需要 14 GB 显存。"]]
    answer = make_chain(model=model).ask("那 INT4 呢？", ["ops"], history)
    assert not answer.refused
    assert any("INT4" in s.text and "5.5 GB" in s.text for s in answer.sources)
    messages = model.calls[0]
    assert [m.text for m in messages[:2]] == history[0]  # the conversation goes to the model


def test_changing_the_subject_in_a_follow_up_is_refused() -> None:
    chain = make_chain(model=FakeChat(fail=True))
    answer = chain.ask("红烧肉怎么做？", ["ops"], [[FP16_QUESTION, "大约 14 GB。"]])
    assert answer.refused


def test_follow_up_is_rewritten_by_a_model_that_can(monkeypatch: pytest.MonkeyPatch) -> None:
    def reply(messages: list) -> str:  # type: ignore[type-arg]
        if "改写" in prompt_text(messages):
            return "Lumen-7B 的 INT4 量化版本需要多少显存？"
        return "约 5.5 GB [1]"

    model = FakeChat(reply=reply)
    chain = make_chain(model=model, condense=True)
    queries: list[str] = []
    search = chain.retriever.search

    def spy(query: str, kbs: list[str], k: int, *, focus: str | None = None) -> list:  # type: ignore[type-arg]
        queries.append(query)
        return search(query, kbs, k, focus=focus)

    monkeypatch.setattr(chain.retriever, "search", spy)
    answer = chain.ask("那 INT4 呢？", ["ops"], [[FP16_QUESTION, "大约 14 GB。"]])
    assert queries == ["Lumen-7B 的 INT4 量化版本需要多少显存？"]
    assert answer.answer == "约 5.5 GB [1]"
    assert "INT4" in answer.sources[0].text


@pytest.mark.parametrize(
    ("question", "marker"),
    [(FP16_QUESTION, "资料："), ("How long are Harbor backups kept?", "Passages:")],
)
def test_template_follows_the_question_language(question: str, marker: str) -> None:
    model = FakeChat()
    make_chain(model=model).ask(question, ["ops"])
    prompt = prompt_text(model.calls[0])
    assert marker in prompt and question in prompt


def test_user_template_overrides_the_bundled_one(tmp_path: Path) -> None:
    template = tmp_path / "mine.txt"
    template.write_text(
        "MY TEMPLATE {json: braces stay}\n{context}\nQ={question}", encoding="utf-8"
    )
    model = FakeChat()
    chain = make_chain(settings_for(chain={"prompt_en": str(template)}), model)
    chain.ask("How long are Harbor backups kept?", ["ops"])
    prompt = prompt_text(model.calls[0])
    assert prompt.startswith("MY TEMPLATE {json: braces stay}\n[1] ")
    assert prompt.endswith("Q=How long are Harbor backups kept?")


def test_user_template_without_placeholders_is_a_config_error(tmp_path: Path) -> None:
    template = tmp_path / "bad.txt"
    template.write_text("no placeholders here", encoding="utf-8")
    chain = make_chain(settings_for(chain={"prompt_zh": str(template)}))
    with pytest.raises(ConfigError, match=r"lacks \{context\}"):
        chain.ask(FP16_QUESTION, ["ops"])


@pytest.mark.parametrize("budget", [300, 420, 700])
def test_context_is_packed_within_the_token_budget(budget: int) -> None:
    model = FakeChat()
    settings = settings_for(llm={"context_tokens": budget}, retrieval={"top_k": 8})
    answer = make_chain(settings, model).ask("Harbor backups restore snapshot monitoring", ["ops"])
    prompt = prompt_text(model.calls[0])
    assert estimate_tokens(prompt) <= budget  # FakeChat is counted with the estimate
    assert answer.sources, "the most relevant chunk always gets in (cut if need be)"
    assert passages(prompt) == [(s.index, s.source) for s in answer.sources]


# -- streaming, cancellation, timings -------------------------------------------------------


def test_stream_events_come_in_order() -> None:
    chain = make_chain(model=FakeChat(reply=lambda m: "Kept for 14 days [1]."))
    events = list(chain.stream("How long are Harbor backups kept?", ["ops"]))
    assert isinstance(events[0], SourcesEvent) and events[0].sources
    assert isinstance(events[-1], DoneEvent)
    tokens = events[1:-1]
    assert tokens and all(isinstance(e, TokenEvent) for e in tokens)
    done = events[-1]
    assert "".join(e.text for e in tokens) == done.answer == "Kept for 14 days [1]."
    assert done.to_json()["type"] == "done" and not done.refused
    t = done.timings
    assert 0 < t.retrieval_ms <= t.first_token_ms <= t.total_ms and t.tokens_per_s > 0


def test_cancel_stops_the_answer_and_closes_the_model_stream() -> None:
    cancel = threading.Event()
    model = FakeChat(
        reply=lambda m: " ".join(["word"] * 50),
        on_token=lambda i: cancel.set() if i == 3 else None,
    )
    events = list(
        make_chain(model=model).stream("How long are Harbor backups kept?", ["ops"], cancel=cancel)
    )
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.cancelled
    assert done.answer == "word word word"
    assert model.closed == 1


def test_answer_json_is_the_design_shape() -> None:
    answer = make_chain().ask("How long are Harbor backups kept?", ["ops"])
    data = answer.to_json()
    assert list(data) == [
        *("answer", "refused", "sources", "timings"),
        *("evidence_basis", "answer_mode", "generated"),
    ]
    assert list(data["sources"][0]) == [
        "index",
        "chunk_id",
        "doc_id",
        "source",
        "page",
        "heading",
        "text",
        "score",
        "evidence",
    ]
    assert list(data["timings"]) == ["retrieval_ms", "first_token_ms", "total_ms", "tokens_per_s"]


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"question": "  "}, UsageError, "question is empty"),
        ({"question": "x", "kbs": ["nope"]}, NotFound, "knowledge base nope does not exist"),
        ({"question": "x", "kbs": ["../etc"]}, UsageError, "invalid knowledge base name"),
        ({"question": "x", "history": "not a list"}, UsageError, "history must be a list"),
        ({"question": "x", "history": [["only a question"]]}, UsageError, "history item 1"),
        ({"question": "x", "history": [["q", 3]]}, UsageError, "history item 1"),
        ({"question": "x", "top_k": 0}, UsageError, "top_k"),
        ({"question": "长" * 3000}, InputTooLong, "question is too long"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict, error: type, message: str) -> None:  # type: ignore[type-arg]
    chain = make_chain(model=FakeChat(fail=True))
    kwargs = {"kbs": ["ops"], **kwargs}
    with pytest.raises(error, match=message):
        chain.ask(**kwargs)


def test_kb_whose_embedding_model_cannot_load_is_a_config_error() -> None:
    settings = settings_for()
    if "broken" not in KnowledgeBase.list_names(settings.kbs_dir):
        KnowledgeBase.create(
            settings.kbs_dir, "broken", embedding="/no/such/model", dim=384
        ).close()
    with pytest.raises(ConfigError, match=r"knowledge base broken: .*/no/such/model"):
        make_chain(settings).ask("anything at all", ["broken"])


# -- the real model -------------------------------------------------------------------------


@pytest.mark.slow
def test_real_model_answers_from_the_kb() -> None:
    settings = settings_for(llm={"max_new_tokens": 32})
    chain = QAChain(settings, DefaultChat.from_settings(settings), Retriever(settings))
    assert shared_home() == settings.home
    events = list(chain.stream("How long are Harbor backups kept?", ["ops"]))
    done = events[-1]
    assert isinstance(done, DoneEvent) and not done.refused
    assert "14" in done.answer
    assert len([e for e in events if isinstance(e, TokenEvent)]) > 3
    assert done.timings.tokens_per_s > 0


def test_a_repeated_question_counts_no_tokens_again(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[str] = []

    def counter(model: object) -> Callable[[str], int]:
        def count(text: str) -> int:
            counted.append(text)
            return estimate_tokens(text)

        return count

    monkeypatch.setattr("kbqa.chain.token_counter", counter)
    chain = make_chain()
    first = chain.ask("How long are Harbor backups kept?", ["ops"])
    assert first.sources and counted, "the passages were counted"
    counted.clear()
    again = chain.ask("How long are Harbor backups kept?", ["ops"])
    assert again.to_json()["sources"] == first.to_json()["sources"]
    assert counted == []  # the same passages, template and question: all remembered
