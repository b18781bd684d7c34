"""What the routes share: the settings, the loaded model and chain, the generation gate and the
upload jobs, and the `Annotated[..., Depends(...)]` aliases that hand them to handlers (tests
swap them with `app.dependency_overrides`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from langchain_core.language_models import BaseChatModel

from kbqa.chain import QAChain
from kbqa.retrieval import Retriever
from kbqa.server.errors import ApiError
from kbqa.server.eval_jobs import EvalJobs
from kbqa.server.generation import GenerationGate
from kbqa.server.jobs import JobManager
from kbqa.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    gate: GenerationGate
    jobs: JobManager
    evals: EvalJobs = field(default_factory=EvalJobs)
    chat_model: BaseChatModel | None = None
    """Injected by the caller of create_app, else built from the settings in the lifespan."""
    retriever: Retriever | None = None
    chain: QAChain | None = None
    model_name: str = ""
    """The backend's own model name: `/v1/chat/completions` with it is plain chat, no KB."""


# The dependencies are `async def` though they never await: FastAPI runs a plain `def`
# dependency in its thread pool, a thread round trip per dependency and request.


async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.kbqa
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_retriever(state: StateDep) -> Retriever:
    if state.retriever is None:
        raise ApiError(503, "starting", "the server is starting", headers={"Retry-After": "5"})
    return state.retriever


RetrieverDep = Annotated[Retriever, Depends(get_retriever)]
