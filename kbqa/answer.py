"""What the QA chain returns: an Answer, or a stream of events that ends in one.

The JSON shapes are DESIGN.md's: `Answer.to_json()` is the object `kbqa ask --json` prints and
`POST /v1/ask` returns; each event's `to_json()` is one Server-Sent Event's `data:`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kbqa.relevance import relevance_of
from storage.types import SearchHit


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
        return {
            "index": self.index,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source": self.source,
            "page": self.page,
            "heading": self.heading,
            "text": self.text,
            "score": round(self.score, 4),
        }


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

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "refused": self.refused,
            "sources": [s.to_json() for s in self.sources],
            "timings": self.timings.to_json(),
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
    """Last event: the whole answer. `cancelled` when the caller stopped it early."""

    answer: str
    refused: bool
    timings: Timings
    cancelled: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "done",
            "answer": self.answer,
            "refused": self.refused,
            "timings": self.timings.to_json(),
        }


Event = SourcesEvent | TokenEvent | DoneEvent
