"""Choose a knowledge base's `min_relevance` from evaluation questions.

Each question's top relevance decides its fate at a threshold t: answered when it reaches t,
refused below. The curve gives, for every t, the share of answerable questions kept and of
unanswerable ones refused. The chosen t keeps at least KEEP_TARGET of the answerable questions
while refusing as many unanswerable ones as possible (refusing a question the documents answer
costs the user more than letting the model see passages that do not hold the answer: it can
still say so). Where no t keeps that many, the one maximising kept + refused wins. Among equal
choices the one keeping most answerable questions, then the widest gap between neighbouring
scores, is taken (each candidate sits in the middle of a gap, for margin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from kbqa.errors import UsageError
from kbqa.evaluation.runner import EvalRecord

KEEP_TARGET = 0.95
CURVE_STEPS = 100


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    answerable_kept: float
    unanswerable_refused: float

    def to_json(self) -> dict[str, float]:
        return {
            "threshold": round(self.threshold, 4),
            "answerable_kept": round(self.answerable_kept, 4),
            "unanswerable_refused": round(self.unanswerable_refused, 4),
        }


@dataclass(frozen=True)
class Calibration:
    threshold: float
    point: CurvePoint
    """Kept and refused shares at the chosen threshold, on the questions it was chosen from."""
    curve: list[CurvePoint]

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": round(self.threshold, 4),
            "at_threshold": self.point.to_json(),
            "curve": [p.to_json() for p in self.curve],
        }


def point_at(
    threshold: float, answerable: Sequence[float], unanswerable: Sequence[float]
) -> CurvePoint:
    kept = sum(score >= threshold for score in answerable) / len(answerable)
    refused = sum(score < threshold for score in unanswerable) / len(unanswerable)
    return CurvePoint(threshold, kept, refused)


def calibrate(records: Sequence[EvalRecord]) -> Calibration:
    """The threshold for these records; UsageError unless both kinds of question are present."""
    scored = [r for r in records if r.error is None]
    answerable = [r.top_relevance for r in scored if not r.case.unanswerable]
    unanswerable = [r.top_relevance for r in scored if r.case.unanswerable]
    if not answerable or not unanswerable:
        raise UsageError(
            "calibration needs answerable and unanswerable questions "
            f"(the file has {len(answerable)} answerable, {len(unanswerable)} unanswerable)"
        )
    scores = answerable + unanswerable
    candidates = _candidates(scores)
    points = [point_at(t, answerable, unanswerable) for t in candidates]
    meeting = [p for p in points if p.answerable_kept >= KEEP_TARGET]
    if meeting:
        best = max(p.unanswerable_refused for p in meeting)
        chosen = [p for p in meeting if p.unanswerable_refused == best]
    else:
        best = max(p.answerable_kept + p.unanswerable_refused for p in points)
        chosen = [p for p in points if p.answerable_kept + p.unanswerable_refused == best]
    kept = max(p.answerable_kept for p in chosen)
    threshold = _widest_gap([p.threshold for p in chosen if p.answerable_kept == kept], scores)
    curve = [
        point_at(step / CURVE_STEPS, answerable, unanswerable) for step in range(CURVE_STEPS + 1)
    ]
    return Calibration(threshold, point_at(threshold, answerable, unanswerable), curve)


def _candidates(scores: list[float]) -> list[float]:
    """Thresholds between every pair of neighbouring distinct scores, and at both ends."""
    distinct = sorted(set(scores))
    middles = [(a + b) / 2 for a, b in pairwise(distinct)]
    return [0.0, *middles, min(1.0, distinct[-1] + 1e-6)]


def _widest_gap(thresholds: list[float], scores: list[float]) -> float:
    """Of equally good thresholds (each the middle of a gap between neighbouring scores), the
    one in the widest gap: the least likely to flip a new question close to the old ones."""
    distinct = sorted(set(scores))

    def gap(t: float) -> float:
        above = min((s for s in distinct if s > t), default=1.0)
        below = max((s for s in distinct if s < t), default=0.0)
        return above - below

    widest: float = max(thresholds, key=gap)
    return round(widest, 4)
