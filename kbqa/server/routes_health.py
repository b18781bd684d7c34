"""Open routes: `GET /healthz` and the web page at `GET /` (its assets are under `/static`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from kbqa.ingest.loaders import SUPPORTED_EXTENSIONS
from kbqa.server.errors import ERROR_RESPONSES, ApiError
from kbqa.server.schemas import Health, QueueStatus
from kbqa.server.state import ServerState, StateDep

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(state: StateDep) -> Health:
    ready = bool(getattr(state.chat_model, "ready", True))
    return Health(
        model=state.model_name,
        ready=ready,
        queue=queue_status(state),
        formats=sorted(SUPPORTED_EXTENSIONS),
    )


@router.get(
    "/",
    response_class=FileResponse,
    responses={404: ERROR_RESPONSES[404], 200: {"content": {"text/html": {}}}},
    include_in_schema=True,
)
def index() -> FileResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise ApiError(404, "not_found", "the web page is not installed")
    return FileResponse(page, media_type="text/html")


def queue_status(state: ServerState) -> QueueStatus:
    gate = state.gate
    return QueueStatus(
        running=gate.running,
        waiting=gate.waiting,
        concurrency=gate.concurrency,
        queue_size=gate.queue_size,
    )
