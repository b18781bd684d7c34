"""Bad input gets the documented 4xx in the one error shape, never a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from server_helpers import LiveServer


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code


JSON_ROUTES = [
    "/v1/ask",
    "/v1/chat/completions",
    "/",
    "/v1/kbs",
    "/v1/kbs/default/search",
]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("body", [b"{bad", b'{"question": "x",}', b"\xff\xfe", b"[1, 2"])
def test_malformed_json_is_400(live: LiveServer, path: str, body: bytes) -> None:
    with live.client() as client:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_body_that_is_not_json_is_400(live: LiveServer, path: str) -> None:
    with live.client() as client:
        response = client.post(path, content=b"question=x", headers={"content-type": "text/plain"})
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/ask", {}),
        ("/v1/ask", {"question": 5}),
        ("/v1/ask", {"question": ""}),
        ("/v1/ask", {"question": "   "}),
        ("/v1/ask", {"question": "x", "history": "nope"}),
        ("/v1/ask", {"question": "x", "history": [["only one"]]}),
        ("/v1/ask", {"question": "x", "top_k": 0}),
        ("/v1/ask", {"question": "x", "top_k": "many"}),
        ("/v1/ask", {"question": "x", "stream": "perhaps"}),
        ("/v1/ask", {"question": "x", "kb": []}),
        ("/v1/ask", {"question": "x", "kb": "../etc"}),
        ("/v1/ask", [1, 2]),
        ("/v1/chat/completions", {"model": "kbqa"}),
        ("/v1/chat/completions", {"model": "kbqa", "messages": []}),
        ("/v1/chat/completions", {"model": "kbqa", "messages": [{"role": "robot"}]}),
        ("/v1/chat/completions", {"model": "kbqa", "messages": [{"role": "assistant"}]}),
        ("/v1/chat/completions", {"model": "kbqa", "messages": "hi"}),
        ("/v1/chat/completions", {"model": "kbqa", "n": 2, "messages": []}),
        ("/v1/chat/completions", {"model": "kbqa", "temperature": 9, "messages": []}),
        ("/", {"history": []}),
        ("/", {"prompt": ["x"]}),
        ("/", {"prompt": "x", "top_p": 7}),
        ("/", {"prompt": "x", "history": [[1, 2]]}),
        ("/v1/kbs", {"name": ""}),
        ("/v1/kbs", {"name": "a/b"}),
        ("/v1/kbs", {"name": ".hidden"}),
        ("/v1/kbs", {"name": "x" * 65}),
        ("/v1/kbs", {"name": "ok", "backend": "sqlite"}),
        ("/v1/kbs/default/search", {"query": "x", "top_k": 1000}),
        ("/v1/kbs/default/search", {"top_k": 3}),
    ],
)
def test_wrong_shapes_and_types_are_422(live: LiveServer, path: str, body: Any) -> None:
    with live.client() as client:
        assert_error(client.post(path, json=body), 422)


def test_the_last_chat_message_must_be_from_the_user(live: LiveServer) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with live.client() as client:
        response = client.post("/v1/chat/completions", json={"model": "kbqa", "messages": messages})
    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_kb_is_404_before_any_stream_starts(live: LiveServer, stream: bool) -> None:
    with live.client() as client:
        response = client.post("/v1/ask", json={"question": "x", "kb": "nosuch", "stream": stream})
        assert_error(response, 404)
        assert_error(client.post("/v1/kbs/nosuch/search", json={"query": "x"}), 404, "kb_not_found")
        assert_error(client.get("/v1/kbs/nosuch/documents"), 404, "kb_not_found")
        assert_error(client.delete("/v1/kbs/nosuch"), 404, "kb_not_found")
        assert_error(client.delete("/v1/kbs/default/documents/nosuchdoc"), 404)


@pytest.mark.parametrize("name", [".hidden", "a b", "semi;colon", "x" * 65, "%2e%2e"])
def test_invalid_kb_names_in_paths_are_422(live: LiveServer, name: str) -> None:
    with live.client() as client:
        assert_error(client.get(f"/v1/kbs/{name}/documents"), 422)
        assert_error(client.post(f"/v1/kbs/{name}/search", json={"query": "x"}), 422)


def test_unknown_route_and_method(live: LiveServer) -> None:
    with live.client() as client:
        assert_error(client.get("/v1/nothing-here"), 404, "not_found")
        assert_error(client.put("/v1/ask", json={}), 405, "method_not_allowed")
        assert_error(client.get("/static/no-such-file.js"), 404, "not_found")


def test_huge_json_body_is_413(live: LiveServer) -> None:
    question = "x" * (5 * 1024 * 1024)
    with live.client() as client:
        assert_error(client.post("/v1/ask", json={"question": question}), 413, "payload_too_large")


def test_a_question_too_long_for_the_model_is_413(live: LiveServer) -> None:
    question = "word " * 20_000
    with live.client() as client:
        assert_error(client.post("/v1/ask", json={"question": question}), 413, "input_too_long")
