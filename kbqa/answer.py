"""What the QA chain returns: an Answer, or a stream of events that ends in one.

`Answer.to_json()` is the object `kbqa ask --json` prints and `POST /v1/ask` returns; each
event's `to_json()` is one Server-Sent Event's `data:`.

Evidence (kbqa.evidence) is found after the answer is complete, so the first event's sources
carry none; the `done` event repeats the sources with their `evidence` lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kbqa.relevance import relevance_of
from kbqa.storage.types import SearchHit

Basis = Literal["answer", "question"]
"""What evidence was chosen for: supporting the answer's sentences, or (the answer had no
support, or was itself extracted) matching the question."""
AnswerMode = Literal["generated", "extracted"]


@dataclass(frozen=True)
class Evidence:
    """A sentence (or a sentence and the list it introduces) of a source's text.

    `text == source.text[start:end]` (Python string indices); `score` is 0..1.
    """

    start: int
    end: int
    text: str
    score: float
    basis: Basis

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "score": round(self.score, 4),
            "basis": self.basis,
        }


@dataclass(frozen=True)
class Source:
    """A chunk given to the model, numbered as the answer cites it ([1] is index 1)."""

    index: int
    chunk_id: str
    doc_id: str
    source: str
    page: int | None
    heading: str | None
    text: str
    score: float
    """The 0..1 relevance that let the chunk in (kbqa.relevance)."""
    kb: str
    evidence: tuple[Evidence, ...] | None = None
    """None until evidence was looked for (it is, once the answer is complete)."""

    @classmethod
    def from_hit(cls, index: int, hit: SearchHit) -> Source:
        return cls(
            index=index,
            chunk_id=hit.chunk_id,
            doc_id=hit.doc_id,
            source=hit.source,
            page=hit.page,
            heading=hit.heading,
            text=hit.text,
            score=relevance_of(hit),
            kb=hit.kb,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source": self.source,
            "page": self.page,
            "heading": self.heading,
            "text": self.text,
            "score": round(self.score, 4),
        }
        if self.evidence is not None:
            data["evidence"] = [e.to_json() for e in self.evidence]
        return data


@dataclass
class Timings:
    """Milliseconds from the start of the request, and the generation speed.

    retrieval_ms: until the context was ready (question rewriting, embedding, search, packing).
    first_token_ms: until the first piece of answer text (the refusal itself when refused).
    total_ms: until the answer was complete.
    tokens_per_s: tokens generated / seconds from sending the prompt to the last token
    (0 when the model was not called).
    """

    retrieval_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0
    tokens_per_s: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "retrieval_ms": round(self.retrieval_ms, 1),
            "first_token_ms": round(self.first_token_ms, 1),
            "total_ms": round(self.total_ms, 1),
            "tokens_per_s": round(self.tokens_per_s, 2),
        }


@dataclass
class Answer:
    answer: str
    refused: bool
    """True when nothing in the KBs was relevant and the model was not asked."""
    sources: list[Source] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    evidence_basis: Basis | None = None
    """None when refused or nothing was found."""
    answer_mode: AnswerMode | None = None
    """None when refused."""
    generated: str | None = None
    """The model's text when the answer shown is an extract instead (see kbqa.answer_mode)."""

    @classmethod
    def from_done(cls, done: DoneEvent, sources: list[Source]) -> Answer:
        """The answer a stream ended in; `sources` from its first event unless `done` has them."""
        return cls(
            done.answer,
            done.refused,
            done.sources if done.sources is not None else sources,
            done.timings,
            done.evidence_basis,
            done.answer_mode,
            done.generated,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "refused": self.refused,
            "sources": [s.to_json() for s in self.sources],
            "timings": self.timings.to_json(),
            "evidence_basis": self.evidence_basis,
            "answer_mode": self.answer_mode,
            "generated": self.generated,
        }


@dataclass(frozen=True)
class SourcesEvent:
    """First event: the chunks the model is given (empty when refused or answering without)."""

    sources: list[Source]

    def to_json(self) -> dict[str, Any]:
        return {"type": "sources", "sources": [s.to_json() for s in self.sources]}


@dataclass(frozen=True)
class TokenEvent:
    """A piece of the answer text, in order; joined they are the answer."""

    text: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "token", "text": self.text}


@dataclass(frozen=True)
class DoneEvent:
    """Last event: the whole answer. `cancelled` when the caller stopped it early.

    `answer` is the answer to show: where the streamed text was replaced by an extract
    (`answer_mode` "extracted"), the streamed text is in `generated`. `sources` are the first
    event's, with their evidence (None where no evidence was looked for, e.g. plain chat).
    """

    answer: str
    refused: bool
    timings: Timings
    cancelled: bool = False
    sources: list[Source] | None = None
    evidence_basis: Basis | None = None
    answer_mode: AnswerMode | None = None
    generated: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "done",
            "answer": self.answer,
            "refused": self.refused,
            "timings": self.timings.to_json(),
        }
        if self.sources is not None:
            data["sources"] = [s.to_json() for s in self.sources]
        data |= {
            "evidence_basis": self.evidence_basis,
            "answer_mode": self.answer_mode,
            "generated": self.generated,
        }
        return data


Event = SourcesEvent | TokenEvent | DoneEvent
