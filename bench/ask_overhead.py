"""Fixed overhead of `POST /v1/ask` (stream=true) up to the first token event, on the CPU.

What the GPU run (bench/http_e2e_gpu.py) cannot separate: the time the server spends around the
model, excluding the LLM's prefill and the embedding model's compute. Built at run time in a
temporary KBQA_HOME:

* 8 generated documents of ~380 SentencePiece tokens, one chunk each, ingested with the bundled
  embedding (all-MiniLM-L6-v2); top_k 4, min_relevance 0, so every answer packs 4 chunks
  (~1,500 tokens of context), as in the GPU run;
* a chat model that yields its first token at once (`InstantChat`) and, like ChatGLM2Chat,
  carries a SentencePiece tokenizer (trained here on the same kind of text) that the chain
  counts tokens with (`--counter estimate`: the character estimate of remote backends).

It reports, in ms (median and p90 over `--reps` runs each):

1. stages timed one by one: query embedding (model compute, reported apart), KB open check,
   KB info, dense search, keyword (BM25) search, fusion, SQLite row reads, relevance scoring,
   prompt building and token counting, the chat model's stream set-up;
2. `QAChain.stream` in-process up to the first TokenEvent, total and less the embedding;
3. the ASGI app driven in-process (no sockets) and uvicorn on loopback: time to the `sources`
   and the first `token` event; less (2), that is routing, the generation gate's thread hops
   and SSE framing;
4. with `--profile`, a cProfile of (2) (top functions by cumulative time, embedding included).

Run with one BLAS thread, as the box is shared:

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/ask_overhead.py [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import pstats
import random
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

_WORD_TEXT = (
    "the pump valve pressure sensor reading exceeds threshold operator must check seal "
    "gasket bearing motor shaft alignment lubrication schedule maintenance interval "
    "inspection report temperature flow rate filter cartridge replacement warranty "
    "invoice customer order shipment delivery address contract clause payment terms "
    "network router firewall port configuration backup restore database index query "
    "latency throughput server cluster node memory disk capacity policy employee leave "
    "holiday training safety helmet gloves procedure emergency exit alarm fire drill "
    "quarterly revenue margin forecast budget audit compliance regulation standard"
)
WORDS = _WORD_TEXT.split()
DOCS, DOC_TOKENS, TOP_K = 8, 370, 4


class SentencePieceCounter:
    """What the chain uses of ChatGLM2's tokenizer: `count_tokens`."""

    def __init__(self, model_file: Path) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))

    def count_tokens(self, text: str) -> int:
        return len(self.sp.encode(text))


class InstantChat(BaseChatModel):
    """Streams a few words at once: the model's own time to first token is ~0."""

    model_name: str = "instant"
    tokenizer: Any = None
    """Has `count_tokens`, as ChatGLM2Chat's does; None = the chain's character estimate."""

    @property
    def _llm_type(self) -> str:
        return "instant"

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for word in ("The", "report", "says", "so."):
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"{word} "))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + f" (code {rng.randint(100, 9999)})."


def train_tokenizer(path: Path) -> Path:
    import sentencepiece

    rng = random.Random(1)
    with path.open("wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter([sentence(rng) for _ in range(4000)]),
            model_writer=f,
            model_type="bpe",
            vocab_size=2000,
            hard_vocab_limit=False,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            minloglevel=2,
        )
    return path


def question(rng: random.Random) -> str:
    return "What does the report say about " + " ".join(rng.sample(WORDS, 4)) + "?"


def stop(stream: Iterator[Any]) -> None:
    """Close a generator left after its first items, as the server does."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """(median, p90) ms of `fn()` over `reps` calls, after two warm-up calls."""
    fn()
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]


def build(tmp: Path, counter: str) -> tuple[Any, InstantChat]:
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.settings import load_settings

    counting = SentencePieceCounter(train_tokenizer(tmp / "sp.model"))
    docs = tmp / "docs"
    docs.mkdir()
    rng = random.Random(2)
    for i in range(DOCS):
        parts: list[str] = []
        while counting.count_tokens(" ".join(parts)) < DOC_TOKENS:
            parts.append(sentence(rng))
        (docs / f"doc{i}.txt").write_text(" ".join(parts) + "\n")
    settings = load_settings(
        tmp / "home",
        overrides={
            "ingest": {"chunk_size": 8000, "chunk_overlap": 0},
            "retrieval": {"top_k": TOP_K, "min_relevance": 0.0},
            "llm": {"max_new_tokens": 64, "context_tokens": 2048 - 64},
            "server": {"api_key": "", "queue_size": 64},
        },
    )
    ingest_paths(settings, "bench", [docs])
    return settings, InstantChat(tokenizer=counting if counter == "sentencepiece" else None)


def stage_times(settings: Any, model: InstantChat, reps: int) -> dict[str, tuple[float, float]]:
    """Each step of the ask path on its own, in the order the chain runs them."""
    from kbqa.chain import STOP, QAChain
    from kbqa.llm.factory import token_counter
    from kbqa.prompting import detect_language, fixed_cost, pack_context, qa_messages
    from kbqa.relevance import dense_weight, query_terms, with_relevance
    from kbqa.retrieval import Retriever
    from kbqa.storage import db
    from kbqa.storage.fusion import fuse
    from kbqa.storage.rows import load_chunks
    from kbqa.storage.search import keyword_search

    retriever = Retriever(settings)
    chain = QAChain(settings, model, retriever)
    chain.warm_up(["bench"])
    kb = retriever._open("bench")
    embedder = retriever._embedder(kb.info().embedding, "bench")
    rng = random.Random(5)
    q = question(rng)
    vector = embedder.embed_query(q)
    unit = kb._unit_query(vector)
    with kb._reading():
        index = kb._index.current(kb._conn, db.read_generation(kb._conn))
    n = settings.retrieval.candidates
    dense = index.search(unit, n)
    keyword = keyword_search(kb._conn, q, n, None)
    fused = fuse(dense, keyword, dense_weight=1.0)[: max(3 * TOP_K, 12)]
    hits = kb.search(vector, q, 12, candidates=n)
    scored = [with_relevance(q, h) for h in hits]
    template = chain.template("en")
    count = chain._count
    cold = token_counter(model)  # what the chain counts with, without a memory of earlier counts
    budget = chain.budget()
    packed, context = pack_context(scored[:TOP_K], budget - 200, count)
    messages = qa_messages(template, context, q, [])

    def read_rows() -> None:
        with kb._reading():
            load_chunks(kb._conn, "id", [c.key for c in fused], kb._dim, kb.name)

    def keyword_only() -> None:
        with kb._reading():
            keyword_search(kb._conn, q, n, None)

    def first_chunk() -> None:
        stream = model.stream(messages, stop=STOP)
        next(stream)
        stop(stream)

    def relevance() -> None:
        query_terms.cache_clear()
        for hit in hits:
            with_relevance(q, hit, weight=dense_weight(q, "default"))

    stages: dict[str, Callable[[], Any]] = {
        "query embedding (model compute)": lambda: embedder.embed_query(q),
        "KB names check (open, stat)": lambda: retriever.check_names(["bench"]),
        "KB info (meta + 2 counts)": kb.info,
        "dense search (FAISS)": lambda: index.search(unit, n),
        "keyword search (tokenise + FTS5)": keyword_only,
        "fusion": lambda: fuse(dense, keyword, dense_weight=1.0),
        "SQLite row reads (12 chunks)": read_rows,
        "kb.search total (no embedding)": lambda: kb.search(vector, q, 12, candidates=n),
        "relevance scoring (12 hits)": relevance,
        "language + template + fixed cost": lambda: fixed_cost(
            chain.template(detect_language(q)), q, cold
        ),
        "pack context (4 chunks, counted afresh)": lambda: pack_context(scored[:TOP_K], 1800, cold),
        "pack context (4 chunks, as the chain counts)": lambda: pack_context(
            scored[:TOP_K], 1800, count
        ),
        "qa messages": lambda: qa_messages(template, context, q, []),
        "chat model stream to first chunk": first_chunk,
        "sources event JSON (SSE framing)": lambda: json.dumps(
            {"type": "sources", "sources": [{"text": h.text} for h in packed]}
        ),
    }
    out = {name: timed(fn, reps) for name, fn in stages.items()}
    asked = questions(reps + 2, seed=8)

    def chain_first_token() -> None:
        events = chain.stream(next(asked), ["bench"])
        next(events)  # sources
        next(events)  # first token
        stop(events)

    out["QAChain.stream to first token"] = timed(chain_first_token, reps)
    asked = questions(reps + 2, seed=8)
    precompute_embeddings(retriever, reps + 2, seed=8)
    out["QAChain.stream to first token [precomputed]"] = timed(chain_first_token, reps)
    retriever.close()
    return out


def questions(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    return iter([question(rng) for _ in range(n)])


def precompute_embeddings(retriever: Any, n: int, seed: int) -> None:
    """Embed the `n` questions of `seed` now; the retriever then looks their vectors up, so
    what a request costs afterwards is the overhead around the embedding model."""
    embed = retriever._embed
    vectors = {q: embed("default", "bench", q) for q in questions(n, seed)}
    retriever._embed = lambda model, kb, text: vectors[text]


async def asgi_first_token(app: Any, body: bytes) -> tuple[float, float]:
    """(sources ms, first token ms) of one request through the ASGI app, no sockets."""
    t0 = time.perf_counter()
    times: list[float] = []
    done = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if b'"sources"' in chunk and not times:
                times.append((time.perf_counter() - t0) * 1e3)
            if b'"token"' in chunk and len(times) == 1:
                times.append((time.perf_counter() - t0) * 1e3)
            if not message.get("more_body", False):
                done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/ask",
        "raw_path": b"/v1/ask",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)
    return times[0], times[1]


def raw_first_token(port: int, body: bytes) -> tuple[float, float]:
    """(sources ms, first token ms) over a plain socket: no client library in the way."""
    head = (
        f"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    got_sources = 0.0
    received = b""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        conn.sendall(head + body)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                raise RuntimeError("the stream ended before a token event")
            received += chunk
            if not got_sources and b'"type": "sources"' in received:
                got_sources = (time.perf_counter() - t0) * 1e3
            if b'"type": "token"' in received:
                return got_sources, (time.perf_counter() - t0) * 1e3


def http_times(settings: Any, model: InstantChat, reps: int) -> dict[str, tuple[float, float]]:
    """Time to the sources and the first token event: ASGI in-process, then uvicorn."""
    import uvicorn

    from kbqa.server.app import create_app

    def bodies(seed: int) -> Iterator[bytes]:
        for q in questions(reps + 2, seed):
            yield json.dumps({"question": q, "kb": "bench", "stream": True}).encode()

    def stats(samples: list[float]) -> tuple[float, float]:
        samples = sorted(samples)
        return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]

    def record(label: str, runs: list[tuple[float, float]]) -> None:
        runs = runs[2:]  # warm-up
        out[f"{label}: sources event"] = stats([s for s, _ in runs])
        out[f"{label}: first token event"] = stats([t for _, t in runs])

    out: dict[str, tuple[float, float]] = {}
    app = create_app(settings, chat_model=model)

    async def in_process() -> None:
        async with app.router.lifespan_context(app):
            state = app.state.kbqa
            state.chain.warm_up(["bench"])
            record("ASGI in-process", [await asgi_first_token(app, b) for b in bodies(9)])
            precompute_embeddings(state.retriever, reps + 2, seed=10)
            runs = [await asgi_first_token(app, b) for b in bodies(10)]
            record("ASGI in-process [precomputed]", runs)

    asyncio.run(in_process())

    app = create_app(settings, chat_model=model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        record("uvicorn loopback", [raw_first_token(port, b) for b in bodies(11)])
        precompute_embeddings(app.state.kbqa.retriever, reps + 2, seed=12)
        record("uvicorn loopback [precomputed]", [raw_first_token(port, b) for b in bodies(12)])
    finally:
        server.should_exit = True
        thread.join(30)
    return out


def profile_chain(settings: Any, model: InstantChat, reps: int) -> str:
    """cProfile of `QAChain.stream` to the first token, the query embedding left out (each
    question's vector is computed before profiling): what remains is the fixed overhead."""
    from kbqa.chain import QAChain
    from kbqa.retrieval import Retriever

    retriever = Retriever(settings)
    chain = QAChain(settings, model, retriever)
    chain.warm_up(["bench"])
    asked = list(questions(reps, seed=7))
    precompute_embeddings(retriever, reps, seed=7)
    profiler = cProfile.Profile()
    profiler.enable()
    for q in asked:
        events = chain.stream(q, ["bench"])
        next(events)
        next(events)
        stop(events)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    retriever.close()
    return text.getvalue()


def main() -> None:
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # the raw client hangs up mid-stream
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--counter", choices=["sentencepiece", "estimate"], default="sentencepiece")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbqa_ask_overhead_") as tmp:
        settings, model = build(Path(tmp), args.counter)
        results = stage_times(settings, model, args.reps)
        results |= http_times(settings, model, args.reps)
        lines = [f"{'stage':44} {'p50 ms':>8} {'p90 ms':>8}"]
        lines += [f"{name:44} {p50:8.3f} {p90:8.3f}" for name, (p50, p90) in results.items()]
        embed = results["query embedding (model compute)"][0]
        for name in ("QAChain.stream to first token", "uvicorn loopback: first token event"):
            lines.append(f"{name + ' less embedding':44} {results[name][0] - embed:8.3f}")
        report = "\n".join(lines)
        if args.profile:
            report += "\n\n" + profile_chain(settings, model, args.reps)
        print(report)
        if args.json:
            args.json.write_text(json.dumps({k: list(v) for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
