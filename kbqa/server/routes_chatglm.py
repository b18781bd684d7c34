"""`POST /`: the request and response of ChatGLM2-6B's official `api.py`, answered from the
`default` KB, so clients written for that demo (and LangChain's community `ChatGLM` LLM)
work against kbqa unchanged.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from fastapi import APIRouter, Depends, Request

from kbqa.server.answering import Options, Question, answer_json
from kbqa.server.auth import AccessDep, demand_kbs, require_api_key
from kbqa.server.errors import ERROR_RESPONSES
from kbqa.server.schemas import ChatGLMRequest, ChatGLMResponse
from kbqa.server.state import StateDep
from kbqa.server.streaming import generate

DEFAULT_KB = "default"

router = APIRouter(
    tags=["ChatGLM2 api.py"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)


@router.post("/")
async def chatglm_chat(
    body: ChatGLMRequest, state: StateDep, request: Request, access: AccessDep
) -> ChatGLMResponse:
    demand_kbs(access, [DEFAULT_KB], state.settings)
    history = body.history or []
    options = Options(body.max_length, body.temperature, body.top_p)
    question = Question(body.prompt, [DEFAULT_KB], history, None, options)
    answer = await generate(state, request, partial(answer_json, state, question))
    return ChatGLMResponse(
        response=answer["answer"],
        history=[*history, [body.prompt, answer["answer"]]],
        time=datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
    )
