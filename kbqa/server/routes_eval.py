"""`POST /v1/kbs/{kb}/eval`: evaluate a knowledge base as a background job (kbqa.evaluation).

The job is polled like an upload, at `GET /v1/jobs/{job_id}` (see routes_kbs.get_job).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from kbqa.errors import UsageError
from kbqa.evaluation.cases import EvalCase, case_from_json
from kbqa.jsonlines import BadLine
from kbqa.server.auth import AccessDep, demand, require_api_key
from kbqa.server.errors import ERROR_RESPONSES, ApiError
from kbqa.server.eval_jobs import EvalRequestSpec
from kbqa.server.routes_kbs import require_kb
from kbqa.server.schemas import EvalRequest, JobCreated, KbName
from kbqa.server.state import RetrieverDep, StateDep

router = APIRouter(
    tags=["knowledge bases"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)


@router.post("/v1/kbs/{kb}/eval", status_code=202)
def post_eval(
    kb: Annotated[KbName, Path(description="Knowledge base name")],
    body: EvalRequest,
    state: StateDep,
    retriever: RetrieverDep,
    access: AccessDep,
) -> JobCreated:
    if body.calibrate:  # stores a threshold in the KB: a change, so a write
        demand(access, "write")
    require_kb(state.settings, kb)
    cases, bad_lines = _cases(body.questions)
    if not body.retrieval_only and state.chain is None:
        raise ApiError(503, "starting", "the model is not loaded yet", headers={"Retry-After": "5"})
    spec = EvalRequestSpec(cases, bad_lines, body.retrieval_only, body.calibrate, body.top_k)
    chain = None if body.retrieval_only else state.chain
    return JobCreated(job_id=state.evals.submit(state.settings, retriever, chain, kb, spec).id)


def _cases(items: list[object]) -> tuple[list[EvalCase], list[BadLine]]:
    cases: list[EvalCase] = []
    bad: list[BadLine] = []
    for position, item in enumerate(items, start=1):
        try:
            cases.append(case_from_json(item, position))
        except UsageError as e:
            bad.append(BadLine(position, str(e)))
    if not cases:
        first = bad[0]
        raise ApiError(
            422, "invalid_request", f"no valid question (item {first.line}: {first.error})"
        )
    return cases, bad
