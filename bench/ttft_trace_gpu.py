"""Where one user's time to the first streamed token goes, hop by hop.

The set-up of bench/http_e2e_gpu.py (random full-size ChatGLM2-6B in FP16 behind
`create_app` with continuous batching, a random MiniLM-shaped embedder on the GPU, ~1.5k
tokens of packed context), then sequential `POST /v1/ask` (stream=true) requests with a
timestamp at every hand-over: the client's send, the app's receipt, `QAChain.stream` starting,
the sources being ready, `BatchEngine.submit`, the prefill pass called and returned, the
engine emitting the first token, the chain yielding it, the app sending its SSE event, the
client receiving it (time.perf_counter is CLOCK_MONOTONIC: one clock for both processes).
Python's garbage collections are timed too (gc.callbacks).

The same requests then run under variants of the interpreter's settings, one after another
in the same process: `sys.setswitchinterval(0.0005)` and `gc.freeze()` after start-up.
A last check: whether a thread waiting on a CUDA result holds the GIL.

    PYTHONPATH=. python3 bench/ttft_trace_gpu.py --out $OUT/ttft_trace.json
    PYTHONPATH=. python3 bench/ttft_trace_gpu.py --dry-run --out /tmp/ttft_trace.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_e2e_gpu as setup

N_REQUESTS = 20
MARKS: list[dict[str, float]] = []
"""One dict of timestamps per request, in arrival order (requests are sequential)."""
GC_PAUSES: list[tuple[int, float]] = []


def current() -> dict[str, float]:
    return MARKS[-1] if MARKS else {}


def mark(name: str) -> None:
    marks = current()
    if name not in marks:
        marks[name] = time.perf_counter()


def instrument() -> None:
    """Monkeypatch the hand-over points to record their first time per request."""
    from kbqa.answer import SourcesEvent, TokenEvent
    from kbqa.chain import QAChain
    from kbqa.chatglm import batched_prefill, batching

    chain_stream = QAChain.stream

    def stream(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        mark("chain_start")
        for event in chain_stream(self, *args, **kwargs):
            if isinstance(event, SourcesEvent):
                mark("sources_ready")
            elif isinstance(event, TokenEvent):
                mark("chain_token")
            yield event

    QAChain.stream = stream  # type: ignore[method-assign]

    submit = batching.BatchEngine.submit

    def traced_submit(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark("engine_submit")
        return submit(self, *args, **kwargs)

    batching.BatchEngine.submit = traced_submit  # type: ignore[method-assign]

    prefill = batched_prefill.Prefiller.__call__

    def traced_prefill(self: Any, segments: Any) -> Any:
        mark("prefill_call")
        out = prefill(self, segments)
        mark("prefill_return")
        return out

    batched_prefill.Prefiller.__call__ = traced_prefill  # type: ignore[method-assign]

    emit = batching.Request._emit

    def traced_emit(self: Any, token: int) -> None:
        mark("engine_emit")
        emit(self, token)

    batching.Request._emit = traced_emit  # type: ignore[method-assign]

    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            GC_PAUSES.append((info["generation"], (time.perf_counter() - started.pop("t")) * 1e3))

    gc.callbacks.append(on_gc)


def traced_app(app: Any) -> Callable[..., Any]:
    """The ASGI app, marking a request's arrival and its first token event's send."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/v1/ask":
            await app(scope, receive, send)
            return
        MARKS.append({})
        mark("app_receive")

        async def traced_send(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.body" and b'"token"' in message.get(
                "body", b""
            ):
                mark("app_send_token")
            await send(message)

        await app(scope, receive, traced_send)

    return wrapped


HOPS = [
    ("client_send", "app_receive"),
    ("app_receive", "chain_start"),
    ("chain_start", "sources_ready"),
    ("sources_ready", "engine_submit"),
    ("engine_submit", "prefill_call"),
    ("prefill_call", "prefill_return"),
    ("prefill_return", "engine_emit"),
    ("engine_emit", "chain_token"),
    ("chain_token", "app_send_token"),
    ("app_send_token", "client_token"),
    ("client_send", "client_token"),
]


def summarize(marks: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a, b in HOPS:
        deltas = [(m[b] - m[a]) * 1e3 for m in marks if a in m and b in m]
        if deltas:
            out[f"{a}->{b}"] = {
                "p50": round(setup.pct(deltas, 0.5), 2),
                "p95": round(setup.pct(deltas, 0.95), 2),
                "max": round(max(deltas), 2),
            }
    return out


def gil_check(dry_run: bool) -> dict[str, Any]:
    """Python iterations another thread gets while one waits ~50 ms for a CUDA result."""
    if dry_run:
        return {}
    import torch

    out: dict[str, Any] = {}
    x = torch.ones(4, device="cuda")
    for how, wait in (
        ("tolist", lambda t: t.tolist()),
        ("int", lambda t: int(t[0])),
        ("item", lambda t: t[0].item()),
        ("cpu", lambda t: t.cpu()),
        ("synchronize", lambda t: torch.cuda.synchronize()),
    ):
        done = threading.Event()

        def waiter(wait: Callable[[Any], Any] = wait, done: threading.Event = done) -> None:
            torch.cuda._sleep(100_000_000)  # ~50 ms of GPU clock cycles
            wait(x)
            done.set()

        thread = threading.Thread(target=waiter)
        count = 0
        t0 = time.perf_counter()
        thread.start()
        while not done.is_set():
            count += 1
        out[how] = {"ms": round((time.perf_counter() - t0) * 1e3, 1), "other_thread_loops": count}
        thread.join()
    return out


def serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from kbqa.chatglm import ChatGLM2Tokenizer
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.llm.chatglm2_batched import BatchedChatGLM2Chat
    from kbqa.server.app import create_app
    from kbqa.settings import load_settings

    R: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda":
        R["gpu"] = torch.cuda.get_device_name()
    tmp = Path(tempfile.mkdtemp(prefix="kbqa_ttft_trace_"))
    tokenizer = ChatGLM2Tokenizer(setup.train_tokenizer(tmp / "tokenizer.model"))
    embedding = setup.save_embedding_model(tmp / "embedding")
    setup.write_documents(tmp / "docs", tokenizer)
    context_tokens = 2048 - setup.MAX_NEW
    settings = load_settings(
        tmp / "home",
        overrides={
            "embedding": {"model": str(embedding), "device": device},
            "ingest": {"chunk_size": 8000, "chunk_overlap": 0},
            "retrieval": {"top_k": setup.TOP_K, "min_relevance": 0.0},
            "llm": {
                "backend": "chatglm2",
                "max_new_tokens": setup.MAX_NEW,
                "temperature": 0.0,
                "context_tokens": context_tokens,
                "chatglm2": {"device": device, "max_batch": 16},
            },
        },
    )
    ingest_paths(settings, "bench", [tmp / "docs"], embedding=str(embedding))
    model = setup.build_model(tokenizer, args.dry_run)
    chat = BatchedChatGLM2Chat(
        chatglm=model,
        tokenizer=tokenizer,
        max_new_tokens=setup.MAX_NEW,
        temperature=0.0,
        context_tokens=context_tokens,
        max_batch=16,
        max_seq=2048,
    )
    instrument()
    app = traced_app(create_app(settings, chat_model=chat))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def run_client(label: str, warm: bool) -> None:
        MARKS.clear()
        GC_PAUSES.clear()
        client = subprocess.run(
            [sys.executable, __file__, "--client", str(port)]
            + (["--warm"] if warm else [])
            + (["--dry-run"] if args.dry_run else []),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if client.returncode:
            raise SystemExit(client.stderr[-4000:])
        sent = json.loads(client.stdout.strip().splitlines()[-1])
        marks = MARKS[-len(sent) :]
        for m, (send, token) in zip(marks, sent, strict=True):
            m["client_send"], m["client_token"] = send, token
        R[label] = {
            "hops_ms": summarize(marks),
            "gc_pauses_ms": sorted((round(ms, 2), gen) for gen, ms in GC_PAUSES)[-5:],
            "gc_collections": len(GC_PAUSES),
        }
        print(label, json.dumps(R[label]["hops_ms"]["client_send->client_token"]), flush=True)

    try:
        run_client("warm_up", warm=True)
        run_client("default", warm=False)
        sys.setswitchinterval(0.0005)
        run_client("switch_interval_0.5ms", warm=False)
        sys.setswitchinterval(0.005)
        gc.collect()
        gc.freeze()
        run_client("gc_freeze", warm=False)
        sys.setswitchinterval(0.0005)
        run_client("gc_freeze_and_switch_0.5ms", warm=False)
    finally:
        server.should_exit = True
        thread.join(60)
        chat.close()
    R["gil_while_waiting_on_cuda"] = gil_check(args.dry_run)
    Path(args.out).write_text(json.dumps(R, indent=1))
    print(json.dumps(R, indent=1), flush=True)


async def client(port: int, warm: bool, dry_run: bool) -> list[tuple[float, float]]:
    """(send, first token event) perf_counter pairs of sequential requests."""
    import httpx

    rng = random.Random(7 if warm else None)
    n = 3 if dry_run else (2 if warm else N_REQUESTS)
    out: list[tuple[float, float]] = []
    async with httpx.AsyncClient(timeout=600) as http:
        for _ in range(n):
            question = "What does the report say about " + " ".join(rng.sample(setup.WORDS, 4))
            body = {"question": question + "?", "kb": "bench", "stream": True}
            send = time.perf_counter()
            token = 0.0
            async with http.stream("POST", f"http://127.0.0.1:{port}/v1/ask", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not token and line.startswith("data: ") and '"token"' in line:
                        token = time.perf_counter()
            out.append((send, token))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--out", default="ttft_trace.json")
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(client(args.client, args.warm, args.dry_run))), flush=True)
    else:
        serve(args)


if __name__ == "__main__":
    main()
