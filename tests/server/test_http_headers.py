"""Security headers on every response, a relaxed policy only for the API docs, CORS off unless
`server.cors_origins` allows an origin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import LiveServer, serve_with_model

from kbqa.settings import load_settings
from tests.fake_chat import FakeChat

ALLOWED = "https://app.example.com"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization",
}


@pytest.fixture(scope="module")
def server(docs_home: Path) -> Iterator[LiveServer]:
    running = serve_with_model(docs_home, FakeChat())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("cors-home")
    running = serve_with_model(home, FakeChat(), api_key="k3y", cors_origins=[ALLOWED])
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/healthz", 200),
        ("GET", "/v1/kbs", 200),
        ("GET", "/v1/kbs/default/documents/0123/content", 404),
        ("POST", "/v1/ask", 422),
        ("GET", "/no/such/route", 404),
    ],
)
def test_every_response_carries_the_security_headers(
    server: LiveServer, method: str, path: str, status: int
) -> None:
    with server.client() as client:
        response = client.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self';" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "access-control-allow-origin" not in response.headers


def test_only_the_api_docs_get_a_relaxed_policy(server: LiveServer) -> None:
    with server.client() as client:
        for path in ("/docs", "/redoc"):
            policy = client.get(path).headers["content-security-policy"]
            assert "'unsafe-inline'" in policy and "frame-ancestors 'none'" in policy


def test_cors_is_off_by_default(server: LiveServer) -> None:
    with server.client() as client:
        preflight = client.options("/v1/ask", headers={"Origin": ALLOWED, **PREFLIGHT})
        simple = client.get("/v1/kbs", headers={"Origin": ALLOWED})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


def test_cors_answers_the_allowed_origins_only(cors_server: LiveServer) -> None:
    with cors_server.client() as client:
        preflight = client.options("/v1/ask", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert preflight.status_code == 200  # a preflight carries no key
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = client.options("/v1/ask", headers={"Origin": "https://evil.example", **PREFLIGHT})
        assert "access-control-allow-origin" not in refused.headers
        keyed = client.get("/v1/kbs", headers={"Origin": ALLOWED, "Authorization": "Bearer k3y"})
        assert keyed.status_code == 200
        assert keyed.headers["access-control-allow-origin"] == ALLOWED
        # A refusal is readable by the allowed page too, and still carries the headers.
        unkeyed = client.get("/v1/kbs", headers={"Origin": ALLOWED})
        assert unkeyed.status_code == 401
        assert unkeyed.headers["access-control-allow-origin"] == ALLOWED
        assert unkeyed.headers["x-content-type-options"] == "nosniff"


def test_cors_origins_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_SERVER__CORS_ORIGINS", f"{ALLOWED}, http://localhost:5173")
    settings = load_settings(tmp_path)
    assert settings.server.cors_origins == [ALLOWED, "http://localhost:5173"]
