"""The FastAPI application factory.

`create_app(settings)` wires the routers, the error shape, the body limits and the static web
page; the chat model loads once, in the lifespan, unless the caller injects one (tests inject a
small deterministic model where the model itself is not under test).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from langchain_core.language_models import BaseChatModel

from kbqa.chain import QAChain
from kbqa.llm.factory import build_chat_model, generation_concurrency
from kbqa.retrieval import Retriever
from kbqa.server import (
    routes_ask,
    routes_chatglm,
    routes_documents,
    routes_eval,
    routes_health,
    routes_kbs,
    routes_openai,
)
from kbqa.server.api_docs import install_docs
from kbqa.server.auth import AccessGuard, Authenticator
from kbqa.server.errors import install_error_handlers
from kbqa.server.generation import GenerationGate
from kbqa.server.head import HeadAsGet
from kbqa.server.headers import SecurityHeaders, install_cors
from kbqa.server.hosts import LoopbackHostGuard
from kbqa.server.jobs import JobManager
from kbqa.server.limits import BodyLimit, upload_aware_limit
from kbqa.server.mcp_http import mcp_app
from kbqa.server.routes_health import STATIC_DIR
from kbqa.server.state import ServerState
from kbqa.server.watchers import FolderWatchers
from kbqa.settings import Settings

log = logging.getLogger("kbqa.server")

WORKER_STOP_S = 30.0
"""At shutdown, how long a cancelled generation may take to reach its next token and stop."""


def create_app(settings: Settings, *, chat_model: BaseChatModel | None = None) -> FastAPI:
    state = ServerState(
        settings=settings,
        gate=GenerationGate(
            concurrency=generation_concurrency(settings),
            queue_size=settings.server.queue_size,
            timeout_s=settings.server.request_timeout_s,
        ),
        jobs=JobManager(settings),
        chat_model=chat_model,
    )
    app = FastAPI(
        title="kbqa",
        summary="Answers from your own documents, with sources; ChatGLM2- and OpenAI-compatible.",
        version="0.1.0",
        lifespan=_lifespan,
        # A JSON body without a Content-Type is read as JSON (ChatGLM2's api.py did the same).
        strict_content_type=False,
        # Served by kbqa.server.api_docs from installed assets, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.kbqa = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_for=upload_aware_limit(settings.server.max_upload_mb))
    # Added after the body limit, so it runs before it: a request without the key, or without
    # the scope its route needs, is refused before its body is read.
    authenticator = Authenticator(settings)
    app.add_middleware(AccessGuard, authenticator=authenticator, router=app.router)
    install_cors(app, settings.server.cors_origins)  # outside the guard: preflights carry no key
    app.add_middleware(HeadAsGet)  # outside the guard, which looks up the GET route
    app.add_middleware(
        LoopbackHostGuard,
        allowed_hosts=settings.server.allowed_hosts,
        is_open=authenticator.is_open,
    )
    app.add_middleware(SecurityHeaders)  # outermost: refusals get the headers too
    for module in (
        routes_health,
        routes_ask,
        routes_openai,
        routes_chatglm,
        routes_kbs,
        routes_documents,
        routes_eval,
    ):
        app.include_router(module.router)
    mcp, mcp_routes = mcp_app(state)
    app.state.mcp = mcp
    app.router.routes.extend(mcp_routes.routes)  # `/mcp`, behind the same AccessGuard
    install_docs(app)  # before /static, which would shadow /static/api-docs
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.kbqa
    await anyio.to_thread.run_sync(state.jobs.start)
    if state.chain is None:
        await anyio.to_thread.run_sync(load_components, state)
    log.info("kbqa: model %s ready", state.model_name)
    watchers = FolderWatchers(state.settings, state.jobs)  # server.watch
    watchers.start()
    try:
        async with app.state.mcp.session_manager.run():
            yield
    finally:
        watchers.stop()  # no new syncs; a running one finishes with the jobs below
        # Generations still running stop at their next token, and their threads are waited
        # for (a thread inside torch at interpreter exit aborts the process). Running ingests
        # are stopped, a parse in progress killed (nothing of them is stored); queued ones fail.
        state.gate.close()
        if not await state.gate.wait_idle(WORKER_STOP_S):
            log.error("kbqa: a generation did not stop within %s s", WORKER_STOP_S)
        await anyio.to_thread.run_sync(state.jobs.shutdown)
        await anyio.to_thread.run_sync(watchers.join, WORKER_STOP_S)
        await anyio.to_thread.run_sync(state.evals.shutdown)
        if state.retriever is not None:
            state.retriever.close()


def prepare(app: FastAPI) -> None:
    """Load the model now rather than in the lifespan (the CLI reports a failure as one line)."""
    load_components(app.state.kbqa)


def load_components(state: ServerState) -> None:
    """Build the chat model (unless injected), the retriever and the chain: once per process."""
    if state.chat_model is None:
        state.chat_model = build_chat_model(state.settings)
    state.model_name = backend_model_name(state.chat_model)
    state.retriever = Retriever(state.settings)
    chain = QAChain(state.settings, state.chat_model, state.retriever)
    chain.budget()  # loads a lazily loaded model now, and checks the prompt's token budget
    state.chain = chain


def backend_model_name(model: BaseChatModel) -> str:
    """The name the backend knows itself by (SmolLM2-135M-Instruct, chatglm2-6b, …)."""
    for attribute in ("model_name", "model"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value:
            return value
    return model._llm_type
