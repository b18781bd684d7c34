"""Run the evaluation's questions through the retriever and, unless retrieval-only, the chain.

Every question gets a retrieval pass: the search the chain makes (a follow-up searched as its
earlier questions plus itself, the way the chain does without a model to rewrite it), and the
refusal decision the chain takes from it (no hit reaching its KB's threshold). Unless
`retrieval_only`, the chain then answers the question as `kbqa ask` would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbqa.evaluation.cases import EvalCase
from kbqa.prompting import retrieval_query
from kbqa.relevance import relevance_of
from kbqa.retrieval import Retriever

if TYPE_CHECKING:
    from kbqa.chain import QAChain

RETRIEVAL_DEPTH = 5
"""Hits kept per question: hit@1/3/5 and MRR are measured over the top five."""

Progress = Callable[[int, int], None]
"""Called with (questions done, questions in all) after each question."""

_CITATION = re.compile(r"\[(\d+(?:\s*[,，、]\s*\d+)*)\]")


@dataclass(frozen=True)
class Retrieved:
    source: str
    text: str
    relevance: float
    kb: str

    def to_json(self, text_chars: int = 300) -> dict[str, Any]:
        text = self.text if len(self.text) <= text_chars else self.text[:text_chars] + "…"
        return {"source": self.source, "score": round(self.relevance, 4), "text": text}


@dataclass
class EvalRecord:
    """What happened to one question."""

    case: EvalCase
    retrieved: list[Retrieved]
    refused: bool
    """Retrieval-only: no hit reached its KB's threshold. Otherwise: the chain refused."""
    latency_ms: float
    answer: str | None = None
    """None when only retrieval was evaluated."""
    cited: list[str] = field(default_factory=list)
    """Sources of the passages the answer cites with [n]."""
    top_evidence: str | None = None
    """The highest-scoring evidence sentence of the answer's sources, where there is one."""
    error: str | None = None
    """Why the question could not be evaluated (then it counts as failed)."""

    @property
    def top_relevance(self) -> float:
        return self.retrieved[0].relevance if self.retrieved else 0.0


def run_cases(
    cases: Sequence[EvalCase],
    kbs: Sequence[str],
    retriever: Retriever,
    chain: QAChain | None = None,
    *,
    top_k: int | None = None,
    progress: Progress | None = None,
) -> list[EvalRecord]:
    """One record per case, in order; `chain` None = retrieval only."""
    records: list[EvalRecord] = []
    for done, case in enumerate(cases, start=1):
        records.append(_run_one(case, kbs, retriever, chain, top_k))
        if progress is not None:
            progress(done, len(cases))
    return records


def _run_one(
    case: EvalCase,
    kbs: Sequence[str],
    retriever: Retriever,
    chain: QAChain | None,
    top_k: int | None,
) -> EvalRecord:
    from kbqa.errors import KBQAError
    from kbqa.storage.errors import StorageError

    started = time.perf_counter()
    query = retrieval_query(case.history, case.question) if case.history else case.question
    focus = case.question if case.history else None
    depth = max(RETRIEVAL_DEPTH, top_k or 0)
    hits = retriever.search(query, kbs, depth, focus=focus)
    retrieved = [Retrieved(h.source, h.text, relevance_of(h), h.kb) for h in hits]
    refused = not retriever.relevant(hits[: top_k or retriever.settings.retrieval.top_k])
    retrieval_ms = (time.perf_counter() - started) * 1000.0
    if chain is None:
        return EvalRecord(case, retrieved[:RETRIEVAL_DEPTH], refused, retrieval_ms)
    try:
        answer = chain.ask(case.question, list(kbs), [list(t) for t in case.history], top_k)
    except (KBQAError, StorageError) as e:  # this question failed; the others go on
        return EvalRecord(case, retrieved[:RETRIEVAL_DEPTH], refused, retrieval_ms, error=str(e))
    sources = [source.to_json() for source in answer.sources]
    return EvalRecord(
        case,
        retrieved[:RETRIEVAL_DEPTH],
        answer.refused,
        answer.timings.total_ms,
        answer=answer.answer,
        cited=cited_sources(answer.answer, sources),
        top_evidence=top_evidence(sources),
    )


def cited_sources(answer: str, sources: list[dict[str, Any]]) -> list[str]:
    """The `source` of each passage the answer cites as [n] (or [1, 2]), once each, in order."""
    by_index = {s["index"]: s["source"] for s in sources}
    cited: list[str] = []
    for match in _CITATION.finditer(answer):
        for number in re.split(r"\s*[,，、]\s*", match.group(1)):
            source = by_index.get(int(number))
            if source is not None and source not in cited:
                cited.append(source)
    return cited


def top_evidence(sources: list[dict[str, Any]]) -> str | None:
    """The best evidence sentence over all sources (kbqa.evidence), or None without any."""
    spans = [span for s in sources for span in s.get("evidence") or []]
    if not spans:
        return None
    return str(max(spans, key=lambda span: span.get("score", 0.0))["text"])
