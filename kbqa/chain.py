"""Question (+ history) → retrieve → prompt → LLM → answer with inline citations and its sources.

    history? ──► standalone question (the LLM rewrites it, where the backend can)
             └─► or search on the last questions + the new one (the bundled small model)
    search the KBs ─► keep relevance ≥ the KB's min_relevance ─► pack by the token budget
    nothing kept ──► refusal without calling the LLM (or, with chain.on_no_context = "chat",
                     a plain chat answer labelled as not from the KB)
    else ──► zh/en template, numbered passages [1] [2] … ─► LLM stream ─► Answer
    answer.mode (kbqa.answer_mode) ──► quote the sources instead of calling the LLM, or after
                                       it where its answer has no support; evidence for both

`QAChain.stream` yields SourcesEvent, then TokenEvents, then one DoneEvent; `QAChain.ask`
collects them into an Answer. The CLI and the HTTP server both call these two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import Runnable, RunnableLambda

from kbqa.answer import Answer, DoneEvent, Event, Source, SourcesEvent, Timings, TokenEvent
from kbqa.answer_mode import Outcome, extract, extracts_first, review
from kbqa.errors import ConfigError, UsageError
from kbqa.evidence import SentenceEncoder
from kbqa.llm.factory import model_token_budget, token_counter
from kbqa.neighbours import adjacent_chunks, with_further
from kbqa.prompting import (
    HISTORY_SHARE,
    MESSAGE_OVERHEAD,
    History,
    check_fits,
    check_history,
    condense_input,
    detect_language,
    fit_history,
    fixed_cost,
    history_messages,
    pack_context,
    qa_messages,
    remembering,
    retrieval_query,
)
from kbqa.prompts import TemplateError, fill, load_template
from kbqa.retrieval import Retriever
from kbqa.settings import Settings
from kbqa.storage.fusion import reads_chinese

REFUSAL = {
    "zh": "知识库中没有找到相关信息。",
    "en": "The knowledge base does not contain information about this.",
}
CONDENSE_MAX_TOKENS = 96
FURTHER_HITS = 12
"""Hits searched for when the answer is quoted: sentences of the relevant ones past the
sources compete too. One search serves both: with the default retrieval.candidates (30) each KB
gives the same 30 candidates for k = 4 and for 12, so the first top_k hits are the sources a
search for top_k would have found."""
STOP = ["\n资料：", "\n问题：", "\nPassages:", "\nQuestion:"]
"""The bundled templates' section headings: a small model that starts to echo the prompt
stops there instead of repeating the passages."""


@dataclass
class _Prepared:
    """Everything decided before the model is called."""

    lang: str
    sources: list[Source]
    messages: list[BaseMessage] | None
    """None = refuse without calling the model."""
    label: str = ""
    """Text shown before the model's answer (the not-from-the-KB label)."""
    further: list[Source] | None = None
    """Where the answer will be quoted: the relevant hits past the sources (index 0)."""


class QAChain:
    """Answers questions from knowledge bases with `chat_model`; thread-safe if the model is."""

    def __init__(
        self,
        settings: Settings,
        chat_model: BaseChatModel,
        retriever: Retriever,
        *,
        condense: bool | None = None,
    ) -> None:
        """`condense`: have the model rewrite follow-ups (None = unless it is the bundled
        small model, which cannot do it reliably; then earlier questions join the search)."""
        self.settings = settings
        self.chat_model = chat_model
        self.retriever = retriever
        self.condense = not _is_small_default(chat_model) if condense is None else condense
        self._count = remembering(token_counter(chat_model))
        self._budget: int | None = None
        self._templates: dict[tuple[str, str], str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> QAChain:
        """The configured model and a retriever over `settings.kbs_dir` (loads nothing yet)."""
        from kbqa.llm.factory import build_chat_model

        return cls(settings, build_chat_model(settings), Retriever(settings))

    def warm_up(self, kbs: Sequence[str] = ()) -> None:
        """Load the model, and open `kbs` with their embedding models, now rather than inside
        the first answer's timings. Unknown or invalid KB names raise here."""
        self.budget()
        self.retriever.warm_up(kbs)

    # -- public API ------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        kbs: str | Sequence[str] | None = None,
        history: object = None,
        top_k: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        """The whole answer at once (see `stream`)."""
        sources: list[Source] = []
        for event in self.stream(question, kbs, history, top_k, cancel):
            if isinstance(event, SourcesEvent):
                sources = event.sources
            elif isinstance(event, DoneEvent):
                return Answer.from_done(event, sources)
        raise RuntimeError("the answer stream ended without a DoneEvent")

    def stream(
        self,
        question: str,
        kbs: str | Sequence[str] | None = None,
        history: object = None,
        top_k: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """SourcesEvent, TokenEvent…, DoneEvent. Setting `cancel` ends the answer early.

        `kbs`: a KB name or a list of them (default "default"); `history`: [[question,
        answer], …], oldest first; `top_k` defaults to retrieval.top_k. Bad input raises
        UsageError (or InputTooLong, NotFound) before the first event.
        """
        started = time.perf_counter()
        question, pairs, k = self._check(question, history, top_k)
        names = [kbs] if isinstance(kbs, str) else list(kbs or ["default"])
        prepared = self._prepare(question, names, pairs, k)
        timings = Timings(retrieval_ms=_ms(started))
        quoted = None
        if prepared.sources and prepared.further is not None:
            # A quote may come from the chunk next to a source (the table after its
            # introduction): quoted before the sources are announced, so that they include it.
            nearby = adjacent_chunks(self.retriever.kb, prepared.sources)
            nearby = with_further(nearby, prepared.further)
            quoted = extract(
                question, prepared.lang, prepared.sources, self._encoder, nearby=nearby
            )
        announced = quoted.sources if quoted is not None and quoted.answer else prepared.sources
        yield SourcesEvent([replace(s, evidence=None) for s in announced])
        if prepared.messages is None or (quoted is not None and not quoted.answer):
            # Nothing relevant, or (rarely) sources without a sentence to quote.
            refusal = REFUSAL[prepared.lang]
            timings.first_token_ms = _ms(started)
            yield TokenEvent(refusal)
            timings.total_ms = _ms(started)
            yield DoneEvent(refusal, True, timings, sources=[])
            return
        if quoted is not None:
            timings.first_token_ms = _ms(started)
            yield TokenEvent(quoted.answer)
            timings.total_ms = _ms(started)
            yield _done(quoted, timings, cancelled=False)
            return
        pieces: list[str] = []
        if prepared.label:
            pieces.append(prepared.label)
            yield TokenEvent(prepared.label)
        generation_started = time.perf_counter()
        output_tokens: int | None = None
        cancelled = cancel is not None and cancel.is_set()
        chunks = iter(()) if cancelled else self.chat_model.stream(prepared.messages, stop=STOP)
        try:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                usage = getattr(chunk, "usage_metadata", None)
                if usage:
                    output_tokens = (output_tokens or 0) + int(usage.get("output_tokens", 0))
                text = chunk.text
                if not text:
                    continue
                if not timings.first_token_ms:
                    timings.first_token_ms = _ms(started)
                pieces.append(text)
                yield TokenEvent(text)
        finally:
            # Closing the model's stream stops the generation at once (consumer gone, or
            # cancelled), instead of whenever the garbage collector gets to it.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        answer = "".join(pieces).strip()
        generated = answer[len(prepared.label.strip()) :] if prepared.label else answer
        if output_tokens is None:
            output_tokens = self._count(generated) if generated else 0
        seconds = time.perf_counter() - generation_started
        timings.tokens_per_s = output_tokens / seconds if seconds > 0 else 0.0
        outcome = Outcome(answer, [], None, "generated")
        if prepared.sources:  # a stopped answer keeps what was streamed, with its evidence
            outcome = review(
                question,
                prepared.lang,
                answer,
                prepared.sources,
                self._encoder,
                self.settings.answer,
                replaceable=not cancelled,
            )
        timings.total_ms = _ms(started)
        timings.first_token_ms = timings.first_token_ms or timings.total_ms
        yield _done(outcome, timings, cancelled)

    # -- steps -----------------------------------------------------------------------------

    def _check(
        self, question: object, history: object, top_k: int | None
    ) -> tuple[str, History, int]:
        if not isinstance(question, str) or not question.strip():
            raise UsageError("the question is empty")
        pairs = check_history(history)
        k = self.settings.retrieval.top_k if top_k is None else top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100:
            raise UsageError(f"top_k must be an integer from 1 to 100, got {top_k!r}")
        return question.strip(), pairs, k

    def budget(self) -> int:
        """Tokens the whole prompt may use (see kbqa.llm.factory.model_token_budget)."""
        if self._budget is None:
            self._budget = model_token_budget(self.settings, self.chat_model)
        return self._budget

    def template(self, lang: str, name: str = "qa") -> str:
        override = ""
        if name == "qa":
            override = (
                self.settings.chain.prompt_zh if lang == "zh" else self.settings.chain.prompt_en
            )
        key = (lang, name)
        if key not in self._templates:
            try:
                self._templates[key] = load_template(lang, override, name)
            except TemplateError as e:
                raise ConfigError(str(e)) from None
        return self._templates[key]

    def _prepare(self, question: str, kbs: list[str], history: History, k: int) -> _Prepared:
        lang = detect_language(question)
        template = self.template(lang)
        budget = self.budget()
        needed = fixed_cost(template, question, self._count)
        check_fits(question, needed, budget)
        self.retriever.check_names(kbs)  # unknown or invalid KB names fail before any work
        if history and self.condense:
            query, focus = self._condense(question, history, lang), None
        else:
            query, focus = retrieval_query(history, question), question if history else None
        quoting = extracts_first(
            self.settings.answer.mode, _is_small_default(self.chat_model), lang
        )
        found = self.retriever.search(
            query, kbs, max(k, FURTHER_HITS) if quoting else k, focus=focus
        )
        hits = self.retriever.relevant(found[:k])
        turns = fit_history(
            history,
            self.settings.chain.history_turns,
            (budget - needed) // HISTORY_SHARE,
            self._count,
        )
        if not hits:
            if self.settings.chain.on_no_context == "refuse":
                return _Prepared(lang, [], None)
            label = load_template(lang, name="no_context")
            return _Prepared(lang, [], [*history_messages(turns), HumanMessage(question)], label)
        used = needed + sum(
            self._count(q) + self._count(a) + 2 * MESSAGE_OVERHEAD for q, a in turns
        )
        packed, context = pack_context(hits, budget - used, self._count)
        if not packed:  # the first chunk could not be cut to fit: nothing to answer from
            return _Prepared(lang, [], None)
        sources = [Source.from_hit(i, hit) for i, hit in enumerate(packed, start=1)]
        messages = qa_messages(template, context, question, turns)
        further = None
        if quoting:
            # The retriever's top few often hold the question's words in an introduction
            # while the sentence with the value sits in a chunk it ranked lower: a model gets
            # only top_k passages, a quote can look further.
            own = {s.chunk_id for s in sources}
            further = [
                Source.from_hit(0, hit)
                for hit in self.retriever.relevant(found)
                if hit.chunk_id not in own
            ]
        return _Prepared(lang, sources, messages, further=further)

    def _encoder(self, kb: str) -> SentenceEncoder:
        """KB `kb`'s embedding model, for evidence (already loaded: it searched the KB)."""
        embedder = self.retriever.embedder_for(kb)
        return SentenceEncoder(embedder.embed, reads_chinese(embedder.name))

    def _condense(self, question: str, history: History, lang: str) -> str:
        """The follow-up rewritten by the LLM into a standalone question (LCEL)."""
        turns = history[-max(self.settings.chain.history_turns, 1) :]
        template = self.template(lang, "condense")
        rewrite: Runnable[str, str] = (
            RunnableLambda[str, list[BaseMessage]](
                lambda q: [
                    HumanMessage(fill(template, history=condense_input(turns, q), question=q))
                ]
            )
            | self.chat_model.bind(max_tokens=CONDENSE_MAX_TOKENS, stop=["\n"])
            | StrOutputParser()
        )
        standalone = rewrite.invoke(question).strip()
        # A rewrite that came back empty or rambling is worse than the plain join.
        if not standalone or len(standalone) > 4 * len(question) + 200:
            return retrieval_query(history, question)
        return standalone


def _is_small_default(model: BaseChatModel) -> bool:
    from kbqa.llm.default import DefaultChat

    return isinstance(model, DefaultChat)


def _done(outcome: Outcome, timings: Timings, cancelled: bool) -> DoneEvent:
    return DoneEvent(
        outcome.answer,
        False,
        timings,
        cancelled,
        sources=outcome.sources,
        evidence_basis=outcome.basis,
        answer_mode=outcome.mode,
        generated=outcome.generated,
    )


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
