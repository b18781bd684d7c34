"""kbqa over MCP, driven by the official SDK's client: `kbqa mcp` as a real subprocess over
stdio, and `/mcp` of a real server on loopback over streamable HTTP, behind its keys."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from server_helpers import (
    REPO,
    LiveServer,
    make_home,
    serve_with_model,
    write_documents,
)
from typer.testing import CliRunner

from kbqa.cli import app
from kbqa.ingest.pipeline import ingest_paths
from kbqa.keys import KeyStore
from kbqa.settings import load_settings
from tests.fake_chat import FakeChat

QUESTION = "How much does the Zephyr-9 widget weigh?"
TOOLS = {"search", "ask", "list_knowledge_bases", "list_documents"}
QUICK_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "KBQA_ANSWER__MODE": "extract"}
"""For the stdio test: the answer quotes the sources (the chain's own extract mode), so two
processes agree without generating; the HTTP tests compare generated answers."""


@dataclass
class McpServer:
    server: LiveServer
    key: str
    """A read key for `default` only (the home also holds `other`)."""


@pytest.fixture(scope="module")
def mcp_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = make_home(tmp_path_factory, "mcp-home")
    folder = write_documents(home.parent / f"{home.name}-docs")
    settings = load_settings(home, overrides={"server": {"api_key": ""}})
    for kb in ("default", "other"):
        assert not ingest_paths(settings, kb, [folder]).failed
    return home


@pytest.fixture(scope="module")
def served(mcp_home: Path) -> Iterator[McpServer]:
    key = KeyStore(mcp_home).create("assistant", "read", ["default"])[1]
    server = serve_with_model(mcp_home, FakeChat())
    yield McpServer(server, key)
    server.stop()


@asynccontextmanager
async def http_session(served: McpServer, key: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key or served.key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(f"{served.server.url}/mcp", http_client=http)) as client,
    ):
        yield client


def without_timings(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "timings"}


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def tool_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    return " ".join(getattr(part, "text", "") for part in result.content)


def test_http_tools_answer_as_the_api_does(served: McpServer) -> None:
    async def scenario() -> None:
        async with http_session(served) as client:
            listed = await client.list_tools()
            assert {tool.name for tool in listed.tools} == TOOLS
            answer = await call(client, "ask", {"question": QUESTION})
            found = await call(client, "search", {"query": "Zephyr battery", "k": 2})
            kbs = await call(client, "list_knowledge_bases", {})
            documents = await call(client, "list_documents", {"kb": "default"})
        with served.server.client(headers={"authorization": f"Bearer {served.key}"}) as http:
            api_answer = http.post("/v1/ask", json={"question": QUESTION}).json()
            api_search = http.post(
                "/v1/kbs/default/search", json={"query": "Zephyr battery", "top_k": 2}
            ).json()
            api_documents = http.get("/v1/kbs/default/documents").json()
        assert answer["sources"] and answer["answer"]
        assert without_timings(answer) == without_timings(api_answer)
        for hit in api_search["results"]:
            hit["score"] = round(hit["score"], 4)  # as `kbqa search --json` prints it
        assert found == api_search
        assert [kb["name"] for kb in kbs["kbs"]] == ["default"]  # the key sees only default
        assert {d["doc_id"] for d in documents["documents"]} == {
            d["doc_id"] for d in api_documents["documents"]
        }

    anyio.run(scenario)


def test_bad_tool_input_is_a_tool_error_and_the_server_goes_on(served: McpServer) -> None:
    async def scenario() -> None:
        async with http_session(served) as client:
            assert "query is empty" in await tool_error(client, "search", {"query": "  "})
            assert "question is empty" in await tool_error(client, "ask", {"question": ""})
            unknown = await tool_error(client, "list_documents", {"kb": "nope"})
            hidden = await tool_error(client, "list_documents", {"kb": "other"})
            # A KB the key may not see reads exactly like one that does not exist.
            assert unknown.replace("nope", "X") == hidden.replace("other", "X")
            assert "does not exist" in hidden and "other" not in hidden.replace("other does", "")
            assert await tool_error(client, "search", {"query": "Zephyr", "k": 0})
            assert await tool_error(client, "ask", {"question": "Zephyr?", "history": "nonsense"})
            assert await tool_error(
                client, "ask", {"question": "Zephyr?", "kb": ["default", "../x"]}
            )
            assert await call(client, "list_knowledge_bases", {})  # still serving

    anyio.run(scenario)


def test_documents_are_resources(served: McpServer) -> None:
    async def scenario() -> None:
        async with http_session(served) as client:
            templates = await client.list_resource_templates()
            assert [t.uri_template for t in templates.resource_templates] == [
                "kbqa://{kb}/{doc_id}"
            ]
            documents = await call(client, "list_documents", {"kb": "default"})
            zephyr = next(d for d in documents["documents"] if d["source"] == "zephyr.md")
            read = await client.read_resource(f"kbqa://default/{zephyr['doc_id']}")
            assert "412 grams" in getattr(read.contents[0], "text", "")
            with pytest.raises(Exception, match="does not exist"):
                await client.read_resource(f"kbqa://other/{zephyr['doc_id']}")
            with pytest.raises(Exception, match="no document"):
                await client.read_resource("kbqa://default/0123456789abcdef")

    anyio.run(scenario)


def test_http_mcp_needs_a_valid_key(served: McpServer) -> None:
    statuses: list[int] = []

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    async def scenario() -> None:
        headers = {"Authorization": "Bearer kbqa_not-a-key"}
        hooks = {"response": [record]}
        async with (
            httpx2.AsyncClient(headers=headers, event_hooks=hooks) as http,
            Client(streamable_http_client(f"{served.server.url}/mcp", http_client=http)),
        ):
            raise AssertionError("connected with a wrong key")

    with pytest.raises(BaseExceptionGroup):
        anyio.run(scenario)
    assert statuses and set(statuses) == {401}


def test_stdio_ask_matches_kbqa_ask_json(mcp_home: Path) -> None:
    """`kbqa mcp` as an assistant launches it; its answer is `kbqa ask --json`'s."""
    entry = ["-c", "from kbqa.cli import app; app()"]
    parameters = StdioServerParameters(
        command=sys.executable,
        args=[*entry, "mcp", "--home", str(mcp_home), "--kb", "default"],
        env=QUICK_ENV,
        cwd=REPO,
    )

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with Client(parameters) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
            kbs = await call(client, "list_knowledge_bases", {})
            return kbs, await call(client, "ask", {"question": QUESTION})

    kbs, answer = anyio.run(scenario)
    assert [kb["name"] for kb in kbs["kbs"]] == ["default"]  # --kb limits what it serves
    # The command in this process (its embedding model is loaded already): one subprocess is
    # the stdio server the test is about, a second would only load the same models again.
    asked = CliRunner().invoke(
        app, ["ask", QUESTION, "--json", "--home", str(mcp_home), "--kb", "default"], env=QUICK_ENV
    )
    assert asked.exit_code == 0, asked.stderr
    expected = json.loads(asked.stdout)
    assert answer["sources"] and "evidence" in answer["sources"][0]
    assert without_timings(answer) == without_timings(expected)
