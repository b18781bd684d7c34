"""The auth matrix: every route × {no key, wrong key, read, write, admin, a key for another KB}.

The routes come from the app itself, so a route added without a decision here fails
`test_every_route_has_a_decision`. A refusal must change nothing: the KBs, their documents,
their calibration, the saved uploads and the key file are compared before and after.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import (
    LiveServer,
    make_home,
    serve_with_model,
    wait_for_job,
    write_documents,
)
from starlette.routing import Mount

from kbqa.ingest.pipeline import ingest_paths
from kbqa.kb_admin import list_documents, list_kbs
from kbqa.keys import FULL_ACCESS, SCOPES, KeyStore
from kbqa.server.auth import Authenticator, flat_routes
from kbqa.server.errors import ApiError
from kbqa.settings import load_settings
from kbqa.storage.kb import KnowledgeBase
from tests.fake_chat import FakeChat

SETUP_KEY = "setup-admin-key-from-the-environment"
"""`server.api_key` (KBQA_API_KEY): an admin key; the fixtures prepare victims with it."""
KEY_KINDS = ("none", "wrong", "read", "write", "admin", "other")
"""`other`: an admin key limited to the KB `other`, so `default` does not exist for it."""
MCP_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "matrix", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
EVAL_QUESTIONS = [
    {"question": "How much does the Zephyr-9 widget weigh?", "sources": ["zephyr.md"]},
    {"question": "Who painted the Mona Lisa?", "unanswerable": True},
]


@dataclass
class Setup:
    server: LiveServer
    admin: httpx.Client
    keys: dict[str, str]
    doc_id: str
    """zephyr.md in `default`."""
    job_id: str
    """A finished upload job of `default`."""
    counter: Iterator[int]

    def fresh_kb(self) -> str:
        name = f"victim-{next(self.counter)}"
        assert self.admin.post("/v1/kbs", json={"name": name}).status_code == 201
        return name

    def fresh_document(self) -> str:
        name = f"victim-{next(self.counter)}.txt"
        return upload(self.admin, "default", name, f"{name} is a throwaway document.\n")


def upload(client: httpx.Client, kb: str, name: str, text: str) -> str:
    """Upload one file and wait for its ingest; its doc_id."""
    response = client.post(f"/v1/kbs/{kb}/documents", files={"files": (name, text.encode())})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["state"] == "done", job
    documents = client.get(f"/v1/kbs/{kb}/documents").json()["documents"]
    return str(next(d["doc_id"] for d in documents if d["source"].endswith(name)))


Send = Callable[[httpx.Client, Setup, str], httpx.Response]
"""Sends the request with the client of the key under test; the str is what `prepare` made."""


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    needs: str | None
    """The scope the route needs; None for an open route."""
    send: Send
    ok: int = 200
    other: int | None = None
    """The status for the key of another KB, where it is not `ok`."""
    label: str = ""
    prepare: Callable[[Setup], str] = lambda setup: ""
    """Makes a victim (a KB, a document) before the snapshot; its name or id."""


def _job_wait(send: Send) -> Send:
    """A 202 starts a job: wait for it, so it cannot change the KBs under a later test."""

    def sending(client: httpx.Client, setup: Setup, target: str) -> httpx.Response:
        response = send(client, setup, target)
        if response.status_code == 202:
            wait_for_job(setup.admin, response.json()["job_id"])
        return response

    return sending


CASES = [
    Case("GET", "/healthz", None, lambda c, s, t: c.get("/healthz")),
    Case("GET", "/", None, lambda c, s, t: c.get("/")),
    Case("GET", "/static", None, lambda c, s, t: c.get("/static/app.js")),
    Case(
        "GET",
        "/static/api-docs",
        None,
        lambda c, s, t: c.get("/static/api-docs/swagger-ui-bundle.js"),
    ),
    Case("GET", "/openapi.json", None, lambda c, s, t: c.get("/openapi.json")),
    Case("GET", "/docs", None, lambda c, s, t: c.get("/docs")),
    Case("GET", "/docs/oauth2-redirect", None, lambda c, s, t: c.get("/docs/oauth2-redirect")),
    Case("GET", "/redoc", None, lambda c, s, t: c.get("/redoc")),
    Case(
        "POST",
        "/",
        "read",
        lambda c, s, t: c.post("/", json={"prompt": "When does the bakery open?", "history": []}),
        other=404,
    ),
    Case(
        "POST",
        "/v1/ask",
        "read",
        lambda c, s, t: c.post("/v1/ask", json={"question": "How heavy is the Zephyr-9?"}),
        other=404,
    ),
    Case("GET", "/v1/models", "read", lambda c, s, t: c.get("/v1/models")),
    Case(
        "POST",
        "/v1/chat/completions",
        "read",
        lambda c, s, t: c.post(
            "/v1/chat/completions",
            json={"model": "kbqa/default", "messages": [{"role": "user", "content": "Zephyr?"}]},
        ),
        other=404,
    ),
    Case("GET", "/v1/kbs", "read", lambda c, s, t: c.get("/v1/kbs")),
    Case(
        "POST",
        "/v1/kbs",
        "admin",
        lambda c, s, t: c.post("/v1/kbs", json={"name": f"new-{next(s.counter)}"}),
        ok=201,
        other=403,  # an admin of `other` creates only `other`
    ),
    Case(
        "DELETE",
        "/v1/kbs/{kb}",
        "admin",
        lambda c, s, t: c.delete(f"/v1/kbs/{t}"),
        other=404,
        prepare=Setup.fresh_kb,
    ),
    Case(
        "POST",
        "/v1/kbs/{kb}/search",
        "read",
        lambda c, s, t: c.post("/v1/kbs/default/search", json={"query": "Zephyr"}),
        other=404,
    ),
    Case(
        "GET",
        "/v1/kbs/{kb}/documents",
        "read",
        lambda c, s, t: c.get("/v1/kbs/default/documents"),
        other=404,
    ),
    Case(
        "DELETE",
        "/v1/kbs/{kb}/documents/{doc_id}",
        "write",
        lambda c, s, t: c.delete(f"/v1/kbs/default/documents/{t}"),
        other=404,
        prepare=Setup.fresh_document,
    ),
    Case(
        "POST",
        "/v1/kbs/{kb}/documents",
        "write",
        _job_wait(
            lambda c, s, t: c.post(
                "/v1/kbs/default/documents",
                files={"files": (f"up-{next(s.counter)}.txt", b"Uploaded through the matrix.\n")},
            )
        ),
        ok=202,
        other=404,
    ),
    Case(
        "GET", "/v1/jobs/{job_id}", "read", lambda c, s, t: c.get(f"/v1/jobs/{s.job_id}"), other=404
    ),
    Case("GET", "/v1/jobs", "read", lambda c, s, t: c.get("/v1/jobs")),  # only the key's KBs
    Case(
        "GET",
        "/v1/kbs/{kb}/documents/{doc_id}",
        "read",
        lambda c, s, t: c.get(f"/v1/kbs/default/documents/{s.doc_id}"),
        other=404,
    ),
    Case(
        "GET",
        "/v1/kbs/{kb}/documents/{doc_id}/content",
        "read",
        lambda c, s, t: c.get(f"/v1/kbs/default/documents/{s.doc_id}/content"),
        other=404,
    ),
    Case(
        "POST",
        "/v1/kbs/{kb}/eval",
        "read",
        _job_wait(
            lambda c, s, t: c.post(
                "/v1/kbs/default/eval",
                json={"questions": EVAL_QUESTIONS, "retrieval_only": True},
            )
        ),
        ok=202,
        other=404,
    ),
    Case(
        "POST",
        "/v1/kbs/{kb}/eval",
        "write",  # calibrating stores a threshold in the KB
        _job_wait(
            lambda c, s, t: c.post(
                "/v1/kbs/default/eval",
                json={"questions": EVAL_QUESTIONS, "retrieval_only": True, "calibrate": True},
            )
        ),
        ok=202,
        other=404,
        label="calibrate",
    ),
    Case(
        "POST",
        "/mcp",
        "read",  # the tools filter by KB themselves (test_mcp.py)
        lambda c, s, t: c.post("/mcp", json=MCP_INITIALIZE, headers=MCP_HEADERS),
    ),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = make_home(tmp_path_factory, "keys-home")
    folder = write_documents(home.parent / f"{home.name}-docs")
    settings = load_settings(home, overrides={"server": {"api_key": ""}})
    for kb in ("default", "other"):
        assert not ingest_paths(settings, kb, [folder]).failed
    store = KeyStore(home)
    keys = {scope: store.create(scope, scope, None)[1] for scope in SCOPES}
    keys["other"] = store.create("other", "admin", ["other"])[1]
    keys["wrong"] = keys["admin"][:-2] + ("xy" if not keys["admin"].endswith("xy") else "zz")
    # Every wrong key of the matrix counts against 127.0.0.1: the limit is tested on its own.
    server = serve_with_model(
        home, FakeChat(), api_key=SETUP_KEY, auth_failures_per_minute=1_000_000
    )
    admin = server.client(headers={"authorization": f"Bearer {SETUP_KEY}"})
    documents = admin.get("/v1/kbs/default/documents").json()["documents"]
    doc_id = next(d["doc_id"] for d in documents if d["source"] == "zephyr.md")
    response = admin.post("/v1/kbs/default/documents", files={"files": ("job.txt", b"A job.\n")})
    job_id = response.json()["job_id"]
    wait_for_job(admin, job_id)
    yield Setup(server, admin, keys, doc_id, job_id, itertools.count())
    admin.close()
    server.stop()


def snapshot(home: Path) -> dict[str, Any]:
    """Everything a request could change: KBs (sizes, calibration), documents, uploads, keys."""
    settings = load_settings(home)
    kbs = {kb["name"]: kb for kb in list_kbs(settings)}
    documents = {
        name: sorted(d["doc_id"] for d in list_documents(settings, name))
        for name in KnowledgeBase.list_names(settings.kbs_dir)
    }
    uploads = sorted(str(p.relative_to(home)) for p in (home / "uploads").rglob("*"))
    return {
        "kbs": kbs,
        "documents": documents,
        "uploads": uploads,
        "keys": (home / "keys.json").read_bytes(),
    }


def expected_status(case: Case, kind: str) -> int:
    if case.needs is None:
        return case.ok
    if kind in ("none", "wrong"):
        return 401
    if kind == "other":
        return case.other if case.other is not None else case.ok
    return case.ok if SCOPES.index(kind) >= SCOPES.index(case.needs) else 403  # type: ignore[arg-type]


def case_id(case: Case) -> str:
    return f"{case.method} {case.path}" + (f" ({case.label})" if case.label else "")


@pytest.mark.parametrize("kind", KEY_KINDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_auth_matrix(setup: Setup, case: Case, kind: str) -> None:
    headers = {} if kind == "none" else {"authorization": f"Bearer {setup.keys[kind]}"}
    home = setup.server.settings.home
    target = case.prepare(setup)
    before = snapshot(home)
    with setup.server.client(headers=headers) as client:
        response = case.send(client, setup, target)
    want = expected_status(case, kind)
    assert response.status_code == want, response.text
    if want in (401, 403, 404):
        codes = {401: ("unauthorized",), 403: ("forbidden",)}
        allowed = codes.get(want, ("kb_not_found", "model_not_found", "job_not_found"))
        assert response.json()["error"]["code"] in allowed
        assert snapshot(home) == before, f"a refused {case_id(case)} changed something"


def test_every_route_has_a_decision(setup: Setup) -> None:
    """A new route fails here until CASES says which scope it needs."""
    decided = {(case.method, case.path) for case in CASES}
    for route in flat_routes(setup.server.app.router.routes):
        path = getattr(route, "path", "")
        if isinstance(route, Mount):
            assert ("GET", path) in decided, f"no auth decision for {path}"
            continue
        methods = getattr(route, "methods", None) or {"POST"}
        for method in set(methods) - {"HEAD"}:
            assert (method, path) in decided, f"no auth decision for {method} {path}"


def client_for(setup: Setup, kind: str) -> httpx.Client:
    return setup.server.client(headers={"authorization": f"Bearer {setup.keys[kind]}"})


def test_listings_show_only_the_kbs_a_key_sees(setup: Setup) -> None:
    with client_for(setup, "other") as client:
        assert [kb["name"] for kb in client.get("/v1/kbs").json()["kbs"]] == ["other"]
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert "kbqa/other" in models and not models & {"kbqa", "kbqa/default"}
    with client_for(setup, "read") as client:
        names = {kb["name"] for kb in client.get("/v1/kbs").json()["kbs"]}
        assert {"default", "other"} <= names
        assert {"kbqa", "kbqa/default"} <= {
            m["id"] for m in client.get("/v1/models").json()["data"]
        }


def test_a_limited_key_learns_no_other_kb_name(setup: Setup) -> None:
    with client_for(setup, "other") as client:
        for kb in ("default", "missing"):
            response = client.post("/v1/ask", json={"question": "Zephyr?", "kb": ["other", kb]})
            assert response.status_code == 404
            assert response.json()["error"] == {
                "code": "kb_not_found",
                "message": f"knowledge base {kb} does not exist",
            }


def test_the_scope_is_checked_before_the_body_is_read(setup: Setup) -> None:
    # Not multipart at all: parsing it would be a 4xx of its own; the scope comes first.
    with client_for(setup, "read") as client:
        response = client.post("/v1/kbs/default/documents", content=b"x" * 1_000_000)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_a_revoked_key_is_refused_from_the_next_request(setup: Setup) -> None:
    store = KeyStore(setup.server.settings.home)
    key = store.create("short-lived", "read", ["other"])[1]
    with setup.server.client(headers={"authorization": f"Bearer {key}"}) as client:
        assert client.get("/v1/kbs").status_code == 200
        assert store.revoke("short-lived")
        assert client.get("/v1/kbs").status_code == 401


def test_wrong_keys_from_one_address_are_rate_limited(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = make_home(tmp_path_factory, "limited-home")
    key = KeyStore(home).create("only", "read", None)[1]
    server = serve_with_model(home, FakeChat(), auth_failures_per_minute=3)
    try:
        with server.client() as client:
            for attempt in range(3):
                assert client.get("/v1/kbs").status_code == 401  # no key is not a guess
                wrong = {"authorization": f"Bearer wrong-{attempt}"}
                assert client.get("/v1/kbs", headers=wrong).status_code == 401
            for authorization in ("Bearer wrong-again", f"Bearer {key}"):
                limited = client.get("/v1/kbs", headers={"authorization": authorization})
                assert limited.status_code == 429
                assert limited.json()["error"]["code"] == "rate_limited"
                assert 1 <= int(limited.headers["retry-after"]) <= 60
            assert client.get("/healthz").status_code == 200  # open routes stay open
    finally:
        server.stop()


def test_revoking_the_last_key_leaves_the_server_closed(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, overrides={"server": {"api_key": ""}})
    assert Authenticator(settings).access(None, "192.0.2.1") == FULL_ACCESS  # never had keys
    store = KeyStore(tmp_path)
    store.create("only", "read", None)
    assert store.revoke("only")
    with pytest.raises(ApiError) as refused:
        Authenticator(settings).access(None, "192.0.2.1")
    assert refused.value.status == 401
