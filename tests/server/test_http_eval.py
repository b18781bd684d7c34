"""`POST /v1/kbs/{kb}/eval` over real HTTP: a job polled at /v1/jobs/{id}, bad input refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import (
    QUICK_LLM,
    LiveServer,
    make_home,
    serve_with_model,
    server_settings,
    start_server,
    wait_for_job,
    write_documents,
)

from kbqa.ingest.pipeline import ingest_paths
from kbqa.server.app import create_app
from kbqa.settings import load_settings
from tests.fake_chat import FakeChat

QUESTIONS = [
    {"question": "How much does the Zephyr-9 widget weigh?", "facts": ["412 grams"],
     "sources": ["zephyr.md"]},
    {"question": "When does the Harbor Street bakery open?", "facts": ["6 am"],
     "sources": ["harbor.txt"]},
    {"question": "青石桥有多长？", "facts": ["七十二米"], "sources": ["知识.md"]},
    {"question": "红烧肉怎么做才好吃？", "unanswerable": True},
    {"question": "Who won the 1998 football world cup?", "unanswerable": True},
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = make_home(tmp_path_factory, "eval-server")
    folder = write_documents(home.parent / f"{home.name}-docs")
    ingest_paths(server_settings(home), "default", [folder])
    settings = load_settings(
        home,
        overrides={"llm": QUICK_LLM, "server": {"api_key": ""}, "answer": {"mode": "generate"}},
    )
    running = start_server(create_app(settings, chat_model=FakeChat()), settings)
    yield running
    running.stop()


def test_retrieval_only_eval_job_with_calibration(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post(
            "/v1/kbs/default/eval",
            json={"questions": [*QUESTIONS, {"question": ""}], "retrieval_only": True,
                  "calibrate": True},
        )  # fmt: skip
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        job = wait_for_job(client, job_id)
        assert job["state"] == "done" and job["kind"] == "eval", job
        assert job["progress"] == {"questions_total": 5, "questions_done": 5}
        result = job["result"]
        assert result["n"] == 5 and result["retrieval"]["hit@5"] == 1.0
        assert result["invalid_lines"] == [
            {"line": 6, "error": '"question" must be a non-empty string'}
        ]
        threshold = result["calibrated_min_relevance"]
        kbs = {kb["name"]: kb for kb in client.get("/v1/kbs").json()["kbs"]}
        assert kbs["default"]["min_relevance"] == pytest.approx(threshold)
        assert kbs["default"]["calibrated"] is True


def test_full_eval_job_answers_with_the_servers_model(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post("/v1/kbs/default/eval", json={"questions": QUESTIONS[:2]})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        assert job["state"] == "done", job
        # FakeChat repeats the question: no fact is in it.
        assert job["result"]["answer"]["fact_recall"] == 0.0
        assert job["result"]["retrieval_only"] is False


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/kbs/nope/eval", {"questions": QUESTIONS}, 404),
        ("/v1/kbs/..%2Fetc/eval", {"questions": QUESTIONS}, 404),
        ("/v1/kbs/default/eval", {"questions": []}, 422),
        ("/v1/kbs/default/eval", {"questions": [{"question": 3}, "text"]}, 422),
        ("/v1/kbs/default/eval", {"questions": QUESTIONS, "top_k": 0}, 422),
        ("/v1/kbs/default/eval", {"questions": QUESTIONS, "surprise": 1}, 422),
        ("/v1/kbs/default/eval", {"question": "not a list"}, 422),
    ],
)
def test_bad_eval_requests_are_refused(
    server: LiveServer, path: str, body: object, status: int
) -> None:
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"code", "message"}


def test_unknown_eval_job_is_404(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/v1/jobs/eval-0123456789abcdef")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_eval_needs_the_api_key(tmp_path: Path) -> None:
    home = make_home_plain(tmp_path)
    running = serve_with_model(home, FakeChat(), api_key="sekret")
    try:
        with running.client() as client:
            response = client.post("/v1/kbs/default/eval", json={"questions": QUESTIONS})
            assert response.status_code == 401
    finally:
        running.stop()


def make_home_plain(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_an_evaluation_submitted_after_shutdown_is_the_shutting_down_error(tmp_path: Path) -> None:
    from kbqa.evaluation.cases import EvalCase
    from kbqa.retrieval import Retriever
    from kbqa.server.errors import ShuttingDown
    from kbqa.server.eval_jobs import EvalJobs, EvalRequestSpec

    settings = load_settings(tmp_path / "home", overrides={"server": {"api_key": ""}})
    jobs = EvalJobs()
    jobs.shutdown()
    spec = EvalRequestSpec([EvalCase(line=1, question="q")], [], True, False, None)
    with pytest.raises(ShuttingDown) as raised:
        jobs.submit(settings, Retriever(settings), None, "default", spec)
    assert (raised.value.status, raised.value.code) == (503, "shutting_down")
