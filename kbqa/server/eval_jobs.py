"""Evaluation jobs (`POST /v1/kbs/{kb}/eval`): `kbqa eval` run in the background.

Evaluations run one at a time on their own worker thread, through the server's retriever and,
unless retrieval-only, its chain. Unlike upload jobs they live in memory only: a result is
cheap to recompute and changes nothing but, with `calibrate`, the KB's stored threshold (which
is written before any answer is generated). A restart forgets them; `GET /v1/jobs/{id}` then
answers 404. The newest HISTORY finished evaluations are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from kbqa.chain import QAChain
from kbqa.evaluation.cases import EvalCase
from kbqa.evaluation.evaluate import evaluate
from kbqa.jsonlines import BadLine
from kbqa.retrieval import Retriever
from kbqa.server.errors import ShuttingDown, api_error_for
from kbqa.server.schemas import EvalJobProgress, EvalJobStatus
from kbqa.settings import Settings

log = logging.getLogger("kbqa.server")

HISTORY = 100
EvalState = Literal["queued", "running", "done", "failed"]


@dataclass
class EvalJob:
    id: str
    kb: str
    questions_total: int
    questions_done: int = 0
    state: EvalState = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class EvalRequestSpec:
    cases: list[EvalCase]
    bad_lines: list[BadLine]
    retrieval_only: bool
    calibrate: bool
    top_k: int | None


class EvalJobs:
    """Queue, run and remember evaluation jobs; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, EvalJob] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbqa-eval")
        self._closing = False

    def submit(
        self,
        settings: Settings,
        retriever: Retriever,
        chain: QAChain | None,
        kb: str,
        spec: EvalRequestSpec,
    ) -> EvalJob:
        job = EvalJob(id="eval-" + uuid.uuid4().hex, kb=kb, questions_total=len(spec.cases))
        with self._lock:
            if self._closing:
                raise ShuttingDown()
            self._jobs[job.id] = job
            self._forget_old()
            # Under the lock, so that shutdown() never misses a job submitted as it starts.
            self._executor.submit(self._run, job, settings, retriever, chain, spec)
        return dataclasses.replace(job)

    def get(self, job_id: str) -> EvalJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else dataclasses.replace(job)

    def shutdown(self) -> None:
        """Let the running evaluation finish; forget the queued ones. A later `submit` is
        ShuttingDown (503)."""
        with self._lock:
            self._closing = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(
        self,
        job: EvalJob,
        settings: Settings,
        retriever: Retriever,
        chain: QAChain | None,
        spec: EvalRequestSpec,
    ) -> None:
        with self._lock:
            job.state = "running"

        def progress(done: int, total: int) -> None:
            with self._lock:
                job.questions_done, job.questions_total = done, total

        try:
            evaluation = evaluate(
                settings,
                spec.cases,
                [job.kb],
                bad_lines=spec.bad_lines,
                retrieval_only=spec.retrieval_only,
                calibrate_kb=spec.calibrate,
                top_k=spec.top_k,
                retriever=retriever,
                chain_factory=None if chain is None else lambda _: chain,
                progress=progress,
            )
        except Exception as e:
            known = api_error_for(e)
            if known is None:
                log.error("evaluation job %s failed", job.id, exc_info=e)
            with self._lock:
                job.state = "failed"
                job.error = known.message if known else f"evaluation failed: {e}"
                job.error_code = known.code if known else "eval_failed"
            return
        with self._lock:
            job.state, job.result = "done", evaluation.to_json()

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.state in ("done", "failed")]
        for job_id in finished[: max(0, len(finished) - HISTORY)]:
            del self._jobs[job_id]


def eval_job_status(job: EvalJob) -> EvalJobStatus:
    """The job as `GET /v1/jobs/{job_id}` returns it."""
    return EvalJobStatus(
        job_id=job.id,
        kb=job.kb,
        state=job.state,
        progress=EvalJobProgress(
            questions_total=job.questions_total, questions_done=job.questions_done
        ),
        result=job.result,
        error=job.error,
        error_code=job.error_code,
    )
