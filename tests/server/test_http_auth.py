"""With an API key set, only /healthz, GET /, /static/* and the API docs are open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from server_helpers import LiveServer, serve_with_model

from tests.fake_chat import FakeChat

KEY = "s3cret-Key_with.symbols~"


@pytest.fixture(scope="module")
def guarded(docs_home: Path) -> Iterator[LiveServer]:
    # Every wrong key below counts against 127.0.0.1; test_http_keys.py tests the limit itself.
    server = serve_with_model(docs_home, FakeChat(), api_key=KEY, auth_failures_per_minute=10_000)
    yield server
    server.stop()


def test_open_routes_need_no_key(guarded: LiveServer) -> None:
    with guarded.client() as client:
        assert client.get("/healthz").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert client.get("/static/index.html").status_code == 200
        assert client.get("/openapi.json").status_code == 200


PROTECTED = [
    ("GET", "/v1/kbs", None),
    ("POST", "/v1/kbs", {"name": "intruder"}),
    ("DELETE", "/v1/kbs/default", None),
    ("GET", "/v1/kbs/default/documents", None),
    ("POST", "/v1/kbs/default/search", {"query": "Zephyr"}),
    ("POST", "/v1/ask", {"question": "How much does the Zephyr-9 widget weigh?"}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "kbqa", "messages": []}),
    ("POST", "/", {"prompt": "hi", "history": []}),
    ("GET", "/v1/jobs/0123", None),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"bearer {KEY[:-1]}"],
)
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_or_wrong_key_is_401(
    guarded: LiveServer, method: str, path: str, body: object, authorization: str | None
) -> None:
    headers = {"authorization": authorization} if authorization is not None else {}
    with guarded.client() as client:
        response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


def test_unauthenticated_upload_is_refused_before_it_is_read(guarded: LiveServer) -> None:
    big = b"x" * (20 * 1024 * 1024)
    with guarded.client() as client:
        response = client.post("/v1/kbs/default/documents", files={"files": ("a.txt", big)})
    assert response.status_code == 401
    assert not (guarded.settings.home / "uploads").exists()


def test_the_right_key_opens_every_route(guarded: LiveServer) -> None:
    with guarded.client(headers={"authorization": f"Bearer {KEY}"}) as client:
        assert client.get("/v1/kbs").status_code == 200
        assert client.get("/v1/kbs/default/documents").status_code == 200
        answer = client.post("/v1/ask", json={"question": "How much does the Zephyr-9 weigh?"})
        assert answer.status_code == 200
        chat = client.post("/", json={"prompt": "When does the Harbor Street bakery open?"})
        assert chat.status_code == 200


def test_openai_client_with_and_without_the_key(guarded: LiveServer) -> None:
    good = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=KEY)
    reply = good.chat.completions.create(
        model="kbqa", messages=[{"role": "user", "content": "How heavy is the Zephyr-9?"}]
    )
    assert reply.choices[0].message.content
    bad = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_an_open_server_needs_no_key(live: LiveServer) -> None:
    assert httpx.get(f"{live.url}/v1/kbs").status_code == 200
