"""Edges of the HTTP surface over real HTTP: Host names on an open server, one error code per
cause of an unreadable body, HEAD wherever GET is, and look-alike KB names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import LiveServer, make_home, serve_with_model

from tests.fake_chat import FakeChat


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory, "edges-home")


@pytest.fixture(scope="module")
def open_server(home: Path) -> Iterator[LiveServer]:
    server = serve_with_model(home, FakeChat())
    yield server
    server.stop()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def _port(server: LiveServer) -> str:
    return server.url.rsplit(":", 1)[1]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_open_server_refuses_other_host_names(open_server: LiveServer, host: str) -> None:
    with open_server.client() as client:
        for path in ("/healthz", "/v1/kbs", "/"):
            response = client.get(path, headers={"host": host})
            assert_error(response, 400, "host_not_allowed")
            assert "server.allowed_hosts" in response.json()["error"]["message"]


def test_open_server_answers_to_loopback_names_with_any_port(open_server: LiveServer) -> None:
    port = _port(open_server)
    with open_server.client() as client:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert client.get("/healthz", headers={"host": host}).status_code == 200, host


def test_allowed_hosts_extends_the_list(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = make_home(tmp_path_factory, "hosts-home")
    server = serve_with_model(home, FakeChat(), allowed_hosts=["kbqa.internal"])
    try:
        with server.client() as client:
            assert client.get("/healthz", headers={"host": "kbqa.internal:80"}).status_code == 200
            assert client.get("/healthz", headers={"host": "other.internal"}).status_code == 400
    finally:
        server.stop()


def test_a_server_with_a_key_does_not_check_host_names(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = make_home(tmp_path_factory, "keyed-home")
    server = serve_with_model(home, FakeChat(), api_key="edge-key")
    try:
        with server.client() as client:
            assert client.get("/healthz", headers={"host": "kbqa.example"}).status_code == 200
            refused = client.get("/v1/kbs", headers={"host": "kbqa.example"})
            assert_error(refused, 401, "unauthorized")
    finally:
        server.stop()


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/kbs", "/"])
@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b'{"question": "x"}', {"content-type": "application/x-www-form-urlencoded"}, "JSON"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, "nested too deeply"),
        (b'{"question": "caf\xe9"}', JSON, "not UTF-8 (byte 0xe9"),
    ],
    ids=["form-content-type", "deep-nesting", "invalid-utf8"],
)
def test_every_unreadable_body_is_malformed_json(
    open_server: LiveServer, path: str, body: bytes, headers: dict[str, str], reason: str
) -> None:
    with open_server.client() as client:
        response = client.post(path, content=body, headers=headers)
    assert_error(response, 400, "malformed_json")
    assert reason in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/kbs", "/"])
def test_an_empty_body_names_the_body(open_server: LiveServer, path: str) -> None:
    with open_server.client() as client:
        response = client.post(path, content=b"", headers=JSON)
    assert_error(response, 422, "invalid_request")
    assert response.json()["error"]["message"].startswith("body: Field required")


@pytest.mark.parametrize("path", ["/", "/healthz", "/v1/kbs", "/v1/models", "/openapi.json"])
def test_head_is_allowed_wherever_get_is(open_server: LiveServer, path: str) -> None:
    with open_server.client() as client:
        got = client.get(path)
        head = client.head(path)
    assert head.status_code == got.status_code == 200
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""


def test_head_where_there_is_no_get_is_405(open_server: LiveServer) -> None:
    with open_server.client() as client:
        response = client.head("/v1/ask")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


def _names(client: httpx.Client) -> list[str]:
    return sorted(kb["name"] for kb in client.get("/v1/kbs").json()["kbs"])


def test_kb_names_are_canonical_and_lookalikes_refused(open_server: LiveServer) -> None:
    with open_server.client() as client:
        before = _names(client)
        refused = client.post("/v1/kbs", json={"name": "-"})
        assert_error(refused, 422, "invalid_kb_name")
        assert "must contain a letter or a digit" in refused.json()["error"]["message"]
        created = client.post("/v1/kbs", json={"name": "ＡＢ"})
        assert created.status_code == 201, created.text
        assert created.json()["name"] == "AB"
        assert_error(client.post("/v1/kbs", json={"name": "AB"}), 409, "kb_exists")
        assert client.post("/v1/kbs", json={"name": "kb\u0661"}).json()["name"] == "kb1"
        assert_error(client.post("/v1/kbs", json={"name": "kb1"}), 409, "kb_exists")
        # Either spelling reaches the one KB.
        assert client.get("/v1/kbs/ＡＢ/documents").status_code == 200
        assert _names(client) == sorted([*before, "AB", "kb1"])
