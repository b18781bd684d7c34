"""The evaluation's numbers, computed from its records.

- retrieval hit@k: share of answerable questions with an expected source (or, lacking one,
  expected facts) found in the top k hits; MRR: mean of 1/rank of the first such hit in the
  top 5 (0 when none). A hit matches by source (equal, or a path suffix) when the question
  names sources, else by holding one of its facts.
- refusal precision: refused questions that were unanswerable / refused questions; recall:
  unanswerable questions that were refused / unanswerable questions; `answerable_refused`:
  answerable questions refused / answerable questions.
- answer fact_recall: mean over answerable questions with facts of the share of facts the
  answer contains (a refusal contains none).
- citation precision: cited passages whose source is an expected one / cited passages.
- evidence precision: answered questions with facts whose top evidence sentence contains
  one of them / such questions that have evidence.
A metric is None where nothing in the file can score it.

The same numbers per question language (`by_language`): "cjk" for questions written with
Chinese or Japanese characters, "other" for the rest. The two are scored on different scales
(kbqa.relevance: a Chinese question's relevance is mostly its lexical share, another's mostly
the embedding's cosine), so one threshold can refuse well in one language and not the other.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from kbqa.evaluation.cases import source_matches
from kbqa.evaluation.runner import RETRIEVAL_DEPTH, EvalRecord, Retrieved
from kbqa.storage.keyword import has_cjk

METRIC_GROUPS = ("retrieval", "refusal", "answer", "citation", "evidence", "latency_ms")
"""The result's metric groups, in the order people are shown them."""

_SPACE = re.compile(r"\s+")
_MARKUP = re.compile(r"[*`]")


def normalise(text: str) -> str:
    """NFKC, lower case, no Markdown emphasis, no white space: how facts are looked for
    ("13 GB" is found in "13GB", as Chinese documents write it either way)."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub("", _MARKUP.sub("", folded))


def contains_fact(text: str, fact: str) -> bool:
    return normalise(fact) in normalise(text)


def first_hit_rank(record: EvalRecord) -> int | None:
    """1-based rank of the first hit matching the case's expectation; None if none matches."""
    case = record.case
    for rank, hit in enumerate(record.retrieved[:RETRIEVAL_DEPTH], start=1):
        if _matches(hit, case.sources, case.facts):
            return rank
    return None


def _matches(hit: Retrieved, sources: Sequence[str], facts: Sequence[str]) -> bool:
    if sources:
        return any(source_matches(expected, hit.source) for expected in sources)
    return any(contains_fact(hit.text, fact) for fact in facts)


def scores_retrieval(record: EvalRecord) -> bool:
    case = record.case
    return not case.unanswerable and bool(case.sources or case.facts)


def fact_share(record: EvalRecord) -> float:
    if record.answer is None or record.refused:
        return 0.0
    found = sum(contains_fact(record.answer, fact) for fact in record.case.facts)
    return found / len(record.case.facts)


def summarise(records: Sequence[EvalRecord], *, retrieval_only: bool) -> dict[str, Any]:
    """The contract's numbers: retrieval, refusal, answer, citation, evidence, latency_ms."""
    return {
        "retrieval": _retrieval(records),
        "refusal": _refusal(records),
        "answer": {"fact_recall": None if retrieval_only else _fact_recall(records)},
        "citation": {"precision": None if retrieval_only else _citation(records)},
        "evidence": {"precision": None if retrieval_only else _evidence(records)},
        "latency_ms": _latency(records),
    }


def language_of(question: str) -> str:
    """ "cjk" for a question written with Chinese or Japanese characters, else "other"."""
    return "cjk" if has_cjk(question) else "other"


def by_language(records: Sequence[EvalRecord], *, retrieval_only: bool) -> dict[str, Any]:
    """`summarise` for each question language the file has, with its question count `n`."""
    groups: dict[str, list[EvalRecord]] = {}
    for record in records:
        groups.setdefault(language_of(record.case.question), []).append(record)
    return {
        language: {"n": len(group), **summarise(group, retrieval_only=retrieval_only)}
        for language, group in sorted(groups.items())
    }


def metric_table(result: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """The metrics of a `kbqa eval` result as people read them (the terminal, the report):
    the column headings ("all", then each question language with its count where the file has
    more than one) and a row (group, metric, the value shown in each column) per metric."""
    languages = result.get("by_language", {})
    columns = [("all", result)]
    if len(languages) > 1:
        columns += [(f"{language} ({part['n']})", part) for language, part in languages.items()]
    rows = [
        (group, name, [_shown(group, part[group][name]) for _, part in columns])
        for group in METRIC_GROUPS
        for name in result[group]
    ]
    return [heading for heading, _ in columns], rows


def _shown(group: str, value: float | None) -> str:
    if value is None:
        return "—"
    return str(value) if group == "latency_ms" else f"{value:.3f}"


def _retrieval(records: Sequence[EvalRecord]) -> dict[str, float | None]:
    ranks = [first_hit_rank(r) for r in records if scores_retrieval(r)]
    if not ranks:
        return {"hit@1": None, "hit@3": None, "hit@5": None, "mrr": None}
    metrics: dict[str, float | None] = {
        f"hit@{k}": _mean([rank is not None and rank <= k for rank in ranks]) for k in (1, 3, 5)
    }
    metrics["mrr"] = _mean([1.0 / rank if rank else 0.0 for rank in ranks])
    return metrics


def _refusal(records: Sequence[EvalRecord]) -> dict[str, float | None]:
    scored = [r for r in records if r.error is None]
    refused = [r for r in scored if r.refused]
    unanswerable = [r for r in scored if r.case.unanswerable]
    answerable = [r for r in scored if not r.case.unanswerable]
    right = [r for r in refused if r.case.unanswerable]
    return {
        "precision": _share(len(right), len(refused)),
        "recall": _share(len(right), len(unanswerable)),
        "answerable_refused": _share(sum(r.refused for r in answerable), len(answerable)),
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _fact_recall(records: Sequence[EvalRecord]) -> float | None:
    scored = [r for r in records if not r.case.unanswerable and r.case.facts]
    return _mean([fact_share(r) for r in scored])


def _citation(records: Sequence[EvalRecord]) -> float | None:
    verdicts = [
        any(source_matches(expected, cited) for expected in r.case.sources)
        for r in records
        if r.case.sources and not r.refused
        for cited in r.cited
    ]
    return _mean(verdicts)


def _evidence(records: Sequence[EvalRecord]) -> float | None:
    verdicts = [
        any(contains_fact(r.top_evidence, fact) for fact in r.case.facts)
        for r in records
        if r.case.facts and not r.case.unanswerable and r.top_evidence is not None
    ]
    return _mean(verdicts)


def _latency(records: Sequence[EvalRecord]) -> dict[str, float | None]:
    values = sorted(r.latency_ms for r in records)
    return {"p50": _percentile(values, 50), "p95": _percentile(values, 95)}


def _percentile(sorted_values: Sequence[float], percent: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), rounded to 0.1 ms."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * percent / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    value = sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)
    return round(value, 1)


def _mean(values: Sequence[float | bool]) -> float | None:
    return round(sum(float(v) for v in values) / len(values), 4) if values else None


def problems(record: EvalRecord) -> list[str]:
    """Why a question counts as failed; [] when it went right."""
    case = record.case
    found: list[str] = []
    if record.error is not None:
        return [f"error: {record.error}"]
    if case.unanswerable:
        if not record.refused:
            found.append("answered an unanswerable question")
        return found
    if scores_retrieval(record) and first_hit_rank(record) is None:
        found.append(f"expected source not in the top {RETRIEVAL_DEPTH}")
    if record.refused:
        found.append("refused an answerable question")
    elif record.answer is not None and case.facts:
        missing = [f for f in case.facts if not contains_fact(record.answer, f)]
        if missing:
            found.append("answer lacks: " + ", ".join(missing))
    return found
