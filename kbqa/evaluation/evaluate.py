"""One evaluation from start to finish, as `kbqa eval` and `POST /v1/kbs/{kb}/eval` run it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbqa.errors import UsageError
from kbqa.evaluation.calibration import Calibration, calibrate
from kbqa.evaluation.cases import EvalCase
from kbqa.evaluation.metrics import by_language, problems, summarise
from kbqa.evaluation.runner import EvalRecord, Progress, run_cases
from kbqa.jsonlines import BadLine
from kbqa.retrieval import Retriever
from kbqa.settings import Settings

if TYPE_CHECKING:
    from kbqa.chain import QAChain


@dataclass
class Evaluation:
    kbs: list[str]
    records: list[EvalRecord]
    bad_lines: list[BadLine]
    retrieval_only: bool
    min_relevance: float
    """The threshold the refusals were decided by (after calibration, the calibrated one)."""
    calibration: Calibration | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "kb": self.kbs[0] if len(self.kbs) == 1 else self.kbs,
            "n": len(self.records),
            **self.summary,
            "failed": [failure_json(r) for r in self.records if problems(r)],
            "invalid_lines": [bad.to_json() for bad in self.bad_lines],
            "retrieval_only": self.retrieval_only,
            "min_relevance": round(self.min_relevance, 4),
        }
        if self.calibration is not None:
            result["calibrated_min_relevance"] = round(self.calibration.threshold, 4)
            result["calibration"] = self.calibration.to_json()
        return result


def failure_json(record: EvalRecord) -> dict[str, Any]:
    case = record.case
    item: dict[str, Any] = {
        "line": case.line,
        "id": case.id or None,
        "question": case.question,
        "problems": problems(record),
        "top_relevance": round(record.top_relevance, 4),
        "retrieved": [hit.to_json() for hit in record.retrieved],
    }
    if record.answer is not None:
        item["answer"] = record.answer
    return item


def evaluate(
    settings: Settings,
    cases: Sequence[EvalCase],
    kbs: Sequence[str],
    *,
    bad_lines: Sequence[BadLine] = (),
    retrieval_only: bool = False,
    calibrate_kb: bool = False,
    top_k: int | None = None,
    retriever: Retriever | None = None,
    chain_factory: Callable[[Retriever], QAChain] | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Evaluate `cases` against `kbs`. With `calibrate_kb`, the KB's own min_relevance is chosen
    from the questions' retrieval pass and stored before any answer is generated, so the
    refusals and answers reported are those at the new threshold.

    `chain_factory` builds the answering chain over the retriever (default: the configured
    model); it is not called when `retrieval_only`.
    """
    retriever = retriever or Retriever(settings)
    names = retriever.check_names(kbs)
    if calibrate_kb and len(names) != 1:
        raise UsageError("--calibrate needs exactly one knowledge base (--kb NAME)")
    calibration = None
    if calibrate_kb:
        first_pass = run_cases(cases, names, retriever, progress=None)
        calibration = calibrate(first_pass)
        retriever.set_min_relevance(names[0], calibration.threshold)
    chain = None
    if not retrieval_only:
        chain = (chain_factory or _configured_chain(settings))(retriever)
    records = run_cases(cases, names, retriever, chain, top_k=top_k, progress=progress)
    evaluation = Evaluation(
        kbs=names,
        records=records,
        bad_lines=list(bad_lines),
        retrieval_only=retrieval_only,
        min_relevance=retriever.min_relevance(names[0]),
        calibration=calibration,
    )
    evaluation.summary = {
        **summarise(records, retrieval_only=retrieval_only),
        "by_language": by_language(records, retrieval_only=retrieval_only),
    }
    return evaluation


def _configured_chain(settings: Settings) -> Callable[[Retriever], QAChain]:
    def build(retriever: Retriever) -> QAChain:
        from kbqa.chain import QAChain
        from kbqa.llm.factory import build_chat_model

        return QAChain(settings, build_chat_model(settings), retriever)

    return build
