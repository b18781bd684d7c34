"""kbqa over the Model Context Protocol (the official `mcp` SDK): tools to search, ask and list,
and each document as a resource `kbqa://{kb}/{doc_id}`.

`kbqa mcp` serves it over stdio (what desktop assistants and IDEs launch); `kbqa serve` mounts
it at `/mcp` over streamable HTTP, behind the server's keys. The tools are the CLI's and the
API's functions: `ask` returns what `kbqa ask --json` prints, `search` what `kbqa search --json`
prints. Every tool is a read; a caller sees only the KBs its `Access` allows, and a KB it may
not see is reported exactly like one that does not exist.

Bad input (an unknown KB, an empty query, a malformed history) is a tool error with a one-line
message, never a crash of the server.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from pydantic import Field

from kbqa.chain import QAChain
from kbqa.errors import KBQAError
from kbqa.kb_admin import list_documents, list_kbs, read_document
from kbqa.keys import Access
from kbqa.llm.errors import LLMUnavailable
from kbqa.retrieval import Retriever, hit_json
from kbqa.settings import Settings
from kbqa.storage.errors import StorageError
from kbqa.storage.kb import KnowledgeBase

Answering = Callable[[Callable[[threading.Event], dict[str, Any]]], Awaitable[dict[str, Any]]]
"""Runs `fn(cancel)` where answers are generated (the server's generation gate, or a thread)."""

INSTRUCTIONS = (
    "kbqa answers questions from local document collections (knowledge bases) and cites its "
    "sources. Use list_knowledge_bases to see what exists, search to find passages, ask for an "
    "answer with numbered sources and the evidence sentences in them."
)


@dataclass
class McpBackend:
    """What the tools run on: the settings, the retriever and chain (built on first use where
    they are lazy), how an answer is generated, and the caller's access."""

    settings: Settings
    retriever: Callable[[], Retriever]
    chain: Callable[[], QAChain]
    answering: Answering
    access: Callable[[Context], Access]
    default_kb: str = "default"


def build_mcp(backend: McpBackend) -> MCPServer:
    server: MCPServer = MCPServer(name="kbqa", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(description="Find the passages most relevant to a query in a knowledge base.")
    async def search(
        query: Annotated[str, Field(description="What to look for.")],
        ctx: Context,
        kb: Annotated[
            str | None, Field(description="Knowledge base (default: the server's).")
        ] = None,
        k: Annotated[int, Field(ge=1, le=100, description="How many passages.")] = 5,
    ) -> dict[str, Any]:
        if not query.strip():
            raise ToolError("the query is empty")
        name = _visible(backend, ctx, kb or backend.default_kb)
        hits = await _run(lambda: backend.retriever().search(query, [name], k))
        return {"query": query, "results": [hit_json(hit) for hit in hits]}

    @server.tool(
        description=(
            "Answer a question from one or more knowledge bases: the answer, whether it was "
            "refused (nothing relevant found), and the numbered sources it cites, each with "
            "the evidence sentences that support it."
        )
    )
    async def ask(
        question: Annotated[str, Field(description="The question.")],
        ctx: Context,
        kb: Annotated[
            str | list[str] | None,
            Field(description="Knowledge base name, or several (default: the server's)."),
        ] = None,
        history: Annotated[
            list[list[str]] | None,
            Field(description="Earlier turns, oldest first: [[question, answer], ...]."),
        ] = None,
    ) -> dict[str, Any]:
        if not question.strip():
            raise ToolError("the question is empty")
        wanted = [kb] if isinstance(kb, str) else kb or [backend.default_kb]
        names = [_visible(backend, ctx, name) for name in wanted]
        chain = await _run(backend.chain)

        def answer(cancel: threading.Event) -> dict[str, Any]:
            return chain.ask(question, names, history, None, cancel).to_json()

        return await _guarded(backend.answering(answer))

    @server.tool(description="List the knowledge bases with their sizes and embedding models.")
    async def list_knowledge_bases(ctx: Context) -> dict[str, Any]:
        access = backend.access(ctx)
        kbs = await _run(partial(list_kbs, backend.settings))
        return {"kbs": [kb for kb in kbs if access.sees(kb["name"])]}

    @server.tool(
        name="list_documents",
        description="List the documents of a knowledge base (doc_id, source, chunks).",
    )
    async def documents_of(
        kb: Annotated[str, Field(description="Knowledge base name.")], ctx: Context
    ) -> dict[str, Any]:
        name = _visible(backend, ctx, kb)
        documents = await _run(partial(list_documents, backend.settings, name))
        return {"documents": documents}

    @server.resource(
        "kbqa://{kb}/{doc_id}",
        name="document",
        description="A document's text as ingested (its chunks in order).",
        mime_type="text/plain",
    )
    async def document(kb: str, doc_id: str, ctx: Context) -> str:
        try:
            name = _visible(backend, ctx, kb)
        except ToolError as e:
            raise ResourceNotFoundError(str(e)) from None
        found = await _run(partial(read_document, backend.settings, name, doc_id))
        if found is None:
            raise ResourceNotFoundError(f"no document {doc_id} in knowledge base {name}")
        _, chunks = found
        return "\n\n".join(chunk.text for chunk in chunks)

    return server


def _visible(backend: McpBackend, ctx: Context, kb: str) -> str:
    """`kb` if it exists and the caller may see it; otherwise one tool error for both cases."""
    access = backend.access(ctx)
    known = KnowledgeBase.list_names(backend.settings.kbs_dir)
    if not access.sees(kb) or kb not in known:
        visible = access.visible(known)
        hint = f" (existing: {', '.join(visible)})" if visible else ""
        raise ToolError(f"knowledge base {kb} does not exist{hint}")
    return kb


async def _run(fn: Callable[[], Any]) -> Any:
    """`fn()` in a worker thread (storage and models block), its errors as tool errors."""
    return await _guarded(anyio.to_thread.run_sync(fn))


async def _guarded(work: Awaitable[Any]) -> Any:
    try:
        return await work
    except (KBQAError, LLMUnavailable, StorageError) as e:
        raise ToolError(str(e)) from None
    except Exception as e:
        # The HTTP server's own errors (a full queue, a shutdown) carry their message.
        message = getattr(e, "message", None)
        if isinstance(message, str):
            raise ToolError(message) from None
        raise


def stdio_backend(settings: Settings, kbs: list[str]) -> McpBackend:
    """`kbqa mcp`: the user's own process, reading the KBs named (all without any); the
    models load on first use, once."""
    retriever = Retriever(settings)
    lock = threading.Lock()
    chains: list[QAChain] = []

    def chain() -> QAChain:
        with lock:
            if not chains:
                from kbqa.llm.factory import build_chat_model

                built = QAChain(settings, build_chat_model(settings), retriever)
                built.budget()  # loads the model now, not inside the first answer's timings
                chains.append(built)
            return chains[0]

    access = Access("stdio", "read", frozenset(kbs) if kbs else None)
    return McpBackend(
        settings=settings,
        retriever=lambda: retriever,
        chain=chain,
        answering=in_thread,
        access=lambda ctx: access,
        default_kb=kbs[0] if kbs else "default",
    )


async def in_thread(fn: Callable[[threading.Event], dict[str, Any]]) -> dict[str, Any]:
    """`fn(cancel)` in a worker thread; a cancelled request sets `cancel`, which stops the
    generation at its next token."""
    cancel = threading.Event()
    try:
        result: dict[str, Any] = await anyio.to_thread.run_sync(fn, cancel, abandon_on_cancel=True)
        return result
    finally:
        cancel.set()


def run_stdio(settings: Settings, kbs: list[str]) -> None:
    anyio.run(build_mcp(stdio_backend(settings, kbs)).run_stdio_async)
