"""End-to-end latency through HTTP: POST /v1/ask (stream=true) to the first token event.

Everything is built at run time in a temporary KBQA_HOME, so nothing large has to travel:

* a byte-fallback BPE SentencePiece model trained on generated English text (its ids, plus
  ChatGLM2's specials, are far below 65,024);
* ChatGLM2-6B with random full-size FP16 weights on the GPU (`--dry-run`: the tiny preset on
  the CPU). The output rows of ids that carry no text (past the SentencePiece vocabulary,
  byte-fallback and control pieces, so eos too) are zeroed: otherwise a random 6B model picks
  ids with no text almost every step and the stream has no token events to time. The amount
  of compute is unchanged;
* a randomly initialised MiniLM-shaped sentence-transformers model (BERT, hidden 384, 6 layers,
  12 heads, generated WordPiece vocabulary, mean pooling, normalisation), used for ingest and
  for the query, on the same device as the chat model;
* a knowledge base of generated documents of ~400 tokens each, one chunk per document, so the
  top 4 (retrieval.min_relevance 0) pack ~1,500 tokens of context.

The app (`kbqa.server.app.create_app`, with a BatchedChatGLM2Chat injected: continuous
batching, max_batch 16) is served by uvicorn on loopback in a thread of this process; the
client runs in a separate process (httpx, asyncio) so that it does not share the server's GIL.
Time to first token = from sending the request to receiving the first `{"type":"token"}`
event. One user: sequential requests (p50, p95); 16 users: rounds of 16 requests sent at once
(p50, p95), and output token events per second over the rounds' wall time.

The 8 documents and the random questions make many of the 16 users retrieve the same passages in
the same order, so their prompts share ~1,500 leading tokens, which the engine copies rather
than prefills (`engine_stats_http.reused_prefix_tokens`). `--distinct-passages` measures the
other case: 64 documents, each of 16 users at once asking about a different one, no prompt
prefix shared (the dry run: 0 tokens copied).

    PYTHONPATH=. python3 bench/http_e2e_gpu.py --out $OUT/http_e2e.json
    PYTHONPATH=. python3 bench/http_e2e_gpu.py --dry-run --out /tmp/http_e2e.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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

CONTEXT_DOCS, DOC_TOKENS, TOP_K, MAX_NEW = 8, 370, 4, 64
DISTINCT_DOCS = 64
"""Documents of a `--distinct-passages` run: each names its own unit, and each of 16 users at
once asks about a different one, so their prompts part after the template's instructions and
no prompt prefix is shared (the harder case for the engine; see bench/RESULTS.md)."""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + f" (code {rng.randint(100, 9999)})."


def train_tokenizer(path: Path) -> Path:
    import sentencepiece

    rng = random.Random(1)
    corpus = [sentence(rng) for _ in range(4000)]
    with path.open("wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=f,
            model_type="bpe",
            vocab_size=2000,
            hard_vocab_limit=False,
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            minloglevel=2,
        )
    return path


def save_embedding_model(root: Path) -> Path:
    """A random MiniLM-shaped sentence-transformers model in `root/st`."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    hf = root / "hf"
    hf.mkdir(parents=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *chars]
    vocab += [f"##{c}" for c in chars]
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(hf / "vocab.txt"), do_lower_case=True).save_pretrained(hf)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=256)
    pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    out = root / "st"
    SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu").save(str(out))
    return out


def write_documents(folder: Path, tokenizer: Any, count: int, units: bool) -> list[int]:
    """`count` documents of ~DOC_TOKENS tokens; with `units`, document i begins by naming unit
    i, which a question can then ask about."""
    folder.mkdir(parents=True)
    rng = random.Random(2)
    sizes = []
    for i in range(count):
        parts: list[str] = [f"Report of unit{i}."] if units else []
        while tokenizer.count_tokens(" ".join(parts)) < DOC_TOKENS:
            parts.append(sentence(rng))
        text = " ".join(parts)
        sizes.append(tokenizer.count_tokens(text))
        (folder / f"doc{i}.txt").write_text(text + "\n")
    return sizes


def build_model(tokenizer: Any, dry_run: bool) -> Any:
    import torch

    from kbqa.chatglm import ChatGLM2
    from kbqa.chatglm.config import PRESETS

    torch.manual_seed(0)
    if dry_run:
        config: Any = {**PRESETS["tiny"], "padded_vocab_size": tokenizer.vocab_size}
        model = ChatGLM2.from_config(config, device="cpu", dtype=torch.float32)
    else:
        model = ChatGLM2.from_config("chatglm2-6b", device="cuda", dtype=torch.float16)
    sp = tokenizer.sp
    textless = [
        i
        for i in range(model.config.padded_vocab_size)
        if i >= tokenizer.n_words or sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i)
    ]
    with torch.no_grad():
        weight = model.transformer.output_layer.weight
        weight[torch.tensor(textless, device=weight.device)] = 0
    return model


def engine_baseline(chat: Any, tokenizer: Any, context: str, dry_run: bool) -> dict[str, Any]:
    """The same generations submitted straight to the BatchEngine, no HTTP, retrieval or
    LangChain: time to the first token id, at 1 stream and 16 streams submitted at once."""
    from kbqa.chatglm.sampling import SamplingParams

    rng = random.Random(4)
    engine = chat.engine

    def one(out: list[tuple[float, float, int]], barrier: threading.Barrier | None) -> None:
        question = "What does the report say about " + " ".join(rng.sample(WORDS, 4)) + "?"
        prompt = tokenizer.build_chat_input(context + "\n\n" + question)
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        request = engine.submit(
            prompt,
            max_new_tokens=MAX_NEW,
            params=SamplingParams(temperature=0.0),
            stop_ids=[tokenizer.eos_id],
        )
        first, n = 0.0, 0
        for _ in request:
            if not n:
                first = time.perf_counter()
            n += 1
        out.append(((first - t0) * 1e3, (time.perf_counter() - t0) * 1e3, n))

    single: list[tuple[float, float, int]] = []
    for _ in range(2 if dry_run else 10):
        one(single, None)
    many: list[tuple[float, float, int]] = []
    wall = 0.0
    for _ in range(1 if dry_run else 3):
        barrier = threading.Barrier(16)
        threads = [threading.Thread(target=one, args=(many, barrier)) for _ in range(16)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall += time.perf_counter() - t0
    return {
        "prompt_tokens": len(tokenizer.build_chat_input(context + "\n\nWhat?")),
        "users_1_ttft_ms_p50": round(pct([r[0] for r in single], 0.5), 1),
        "users_1_ttft_ms_p95": round(pct([r[0] for r in single], 0.95), 1),
        "users_1_tokens_per_s_p50": round(
            pct([r[2] / (r[1] - r[0]) * 1e3 for r in single if r[1] > r[0]], 0.5), 1
        ),
        "users_16_n": len(many),
        "users_16_ttft_ms_p50": round(pct([r[0] for r in many], 0.5), 1),
        "users_16_ttft_ms_p95": round(pct([r[0] for r in many], 0.95), 1),
        "users_16_total_ms_p50": round(pct([r[1] for r in many], 0.5), 1),
        "users_16_tokens_per_s_total": round(sum(r[2] for r in many) / wall, 1),
    }


def stage_profile(settings: Any, chat: Any, dry_run: bool) -> dict[str, Any]:
    """Where one user's time to first token goes, in this process (no HTTP): the query
    embedding alone, the whole retrieval (embedding, FAISS, FTS5, relevance), the chain's
    preparation (retrieval, counting, packing), and `QAChain.stream` to its first token."""
    from kbqa.answer import TokenEvent
    from kbqa.chain import QAChain
    from kbqa.retrieval import Retriever

    rng = random.Random(5)
    reps = 3 if dry_run else 20
    retriever = Retriever(settings)
    chain = QAChain(settings, chat, retriever)
    embedder = retriever._embedder(retriever._open("bench").info().embedding, "bench")

    def question() -> str:
        return "What does the report say about " + " ".join(rng.sample(WORDS, 4)) + "?"

    def timed(run: Any) -> float:
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3

    def first_token() -> None:
        events = chain.stream(question(), "bench")
        for event in events:
            if isinstance(event, TokenEvent):
                break
        events.close()

    from kbqa.storage.embeddings import Embedder

    on_cpu = Embedder(embedder.name, device="cpu")
    stages = {
        "embed_query": lambda: embedder.embed_query(question()),
        "embed_query_on_cpu": lambda: on_cpu.embed_query(question()),
        "retriever_search": lambda: retriever.search(question(), ["bench"], TOP_K),
        "chain_prepare": lambda: chain._prepare(question(), ["bench"], [], TOP_K),
        "chain_first_token": first_token,
    }
    out: dict[str, Any] = {}
    for name, run in stages.items():
        run()
        times = [timed(run) for _ in range(reps)]
        out[f"{name}_ms_p50"] = round(pct(times, 0.5), 2)
        out[f"{name}_ms_p95"] = round(pct(times, 0.95), 2)
    retriever.close()
    return out


def serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from kbqa.chatglm import ChatGLM2Tokenizer
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.llm.chatglm2_batched import BatchedChatGLM2Chat
    from kbqa.server.app import create_app
    from kbqa.settings import load_settings

    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    R: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "switch_interval_ms": sys.getswitchinterval() * 1e3,
    }
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda":
        R["gpu"] = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="kbqa_http_e2e_"))
    tokenizer = ChatGLM2Tokenizer(train_tokenizer(tmp / "tokenizer.model"))
    R["sp_vocab"] = tokenizer.n_words
    embedding = save_embedding_model(tmp / "embedding")
    count = DISTINCT_DOCS if args.distinct_passages else CONTEXT_DOCS
    R["distinct_passages"] = args.distinct_passages
    R["doc_tokens"] = write_documents(tmp / "docs", tokenizer, count, args.distinct_passages)
    context_tokens = 2048 - MAX_NEW
    settings = load_settings(
        tmp / "home",
        overrides={
            "embedding": {"model": str(embedding), "device": device},
            "ingest": {"chunk_size": 8000, "chunk_overlap": 0},
            "retrieval": {"top_k": TOP_K, "min_relevance": 0.0},
            "llm": {
                "backend": "chatglm2",
                "max_new_tokens": MAX_NEW,
                "temperature": 0.0,
                "context_tokens": context_tokens,
                "chatglm2": {"device": device, "max_batch": 16},
            },
            "server": {"queue_size": 64},
        },
    )
    report = ingest_paths(settings, "bench", [tmp / "docs"], embedding=str(embedding))
    R["ingest_chunks"] = report.chunks
    R["setup_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    model = build_model(tokenizer, args.dry_run)
    chat = BatchedChatGLM2Chat(
        chatglm=model,
        tokenizer=tokenizer,
        max_new_tokens=MAX_NEW,
        temperature=0.0,
        context_tokens=context_tokens,
        max_batch=16,
        max_seq=2048,
    )
    R["model_s"] = round(time.perf_counter() - t0, 1)
    print(f"setup {R['setup_s']} s, model {R['model_s']} s", flush=True)

    app = create_app(settings, chat_model=chat)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("uvicorn did not start")
        time.sleep(0.05)
    try:
        client = subprocess.run(
            [sys.executable, __file__, "--client", str(port), "--out", args.out]
            + (["--dry-run"] if args.dry_run else [])
            + (["--distinct-passages"] if args.distinct_passages else []),
            capture_output=True,
            text=True,
            timeout=args.client_timeout,
        )
        print(client.stderr[-4000:], flush=True)
        measured = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        server.should_exit = True
        thread.join(60)
    sources = measured.pop("first_sources", [])
    # What the engine did for the HTTP part (reused prompt prefixes among them, where the tree
    # has them), before the in-process timings below add to it.
    R["engine_stats_http"] = dict(vars(getattr(chat.engine, "stats", object())))
    try:
        if not (args.http_only or args.distinct_passages):  # these share one context
            R["stages"] = stage_profile(settings, chat, args.dry_run)
            context = "\n\n".join(sources)
            R["engine_only"] = engine_baseline(chat, tokenizer, context, args.dry_run)
    finally:
        chat.close()
    R["context_tokens_packed"] = sum(tokenizer.count_tokens(t) for t in sources)
    R["context_chunks"] = len(sources)
    R.update(measured)
    if device == "cuda":
        R["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    Path(args.out).write_text(json.dumps(R, indent=1))
    print(json.dumps(R, indent=1), flush=True)


async def ask(client: Any, port: int, question: str) -> dict[str, Any]:
    body = {"question": question, "kb": "bench", "stream": True}
    first: float | None = None
    got_sources = 0.0
    events = 0
    sources: list[str] = []
    done: dict[str, Any] = {}
    start = time.perf_counter()
    url = f"http://127.0.0.1:{port}/v1/ask"
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind = event.get("type")
            if kind == "token":
                if first is None:
                    first = time.perf_counter()
                events += 1
            elif kind == "sources":
                got_sources = time.perf_counter()
                sources = [s.get("text", "") for s in event.get("sources", [])]
            elif kind == "done":
                done = event
            elif kind == "error":
                raise RuntimeError(f"error event: {event}")
    end = time.perf_counter()
    if first is None:
        raise RuntimeError(f"no token event; done={done}")
    return {
        "ttft_ms": (first - start) * 1e3,
        "total_ms": (end - start) * 1e3,
        "token_events": events,
        "sources_ms": (got_sources - start) * 1e3,
        "server_timings": done.get("timings", {}),
        "sources": sources,
        "start": start,
        "end": end,
    }


async def measure(port: int, dry_run: bool, distinct: bool) -> dict[str, Any]:
    import httpx

    rng = random.Random(3)
    n_single, rounds = (3, 1) if dry_run else (20, 4)
    units: list[int] = []

    def question() -> str:
        """With `distinct`, about a unit drawn without repeats from a draw of 16 (a round of
        16 users starts a draw of its own: `units.clear()`)."""
        words = " ".join(rng.sample(WORDS, 4))
        if not distinct:
            return f"What does the report say about {words}?"
        if not units:
            units.extend(rng.sample(range(DISTINCT_DOCS), 16))
        return f"What does the report of unit{units.pop()} say about {words}?"

    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        first = await ask(client, port, question())  # warm-up: loads, graph capture, …
        out["first_sources"] = first["sources"]
        out["warmup_first_ttft_ms"] = round(first["ttft_ms"], 1)
        units.clear()
        await asyncio.gather(*(ask(client, port, question()) for _ in range(16)))
        single = [await ask(client, port, question()) for _ in range(n_single)]
        ttft = [r["ttft_ms"] for r in single]
        out["users_1"] = {
            "n": len(ttft),
            "ttft_ms_p50": round(pct(ttft, 0.5), 1),
            "ttft_ms_p95": round(pct(ttft, 0.95), 1),
            "ttft_ms_min": round(min(ttft), 1),
            "sources_event_ms_p50": round(pct([r["sources_ms"] for r in single], 0.5), 1),
            "server_first_token_ms_p50": pct(
                [r["server_timings"].get("first_token_ms") or 0 for r in single], 0.5
            ),
            "server_retrieval_ms_p50": pct(
                [r["server_timings"].get("retrieval_ms") or 0 for r in single], 0.5
            ),
            "token_events_per_request": round(
                sum(r["token_events"] for r in single) / len(single), 1
            ),
            "token_events_per_s_one_stream_p50": round(
                pct(
                    [r["token_events"] / (r["total_ms"] - r["ttft_ms"]) * 1e3 for r in single], 0.5
                ),
                1,
            ),
        }
        many: list[dict[str, Any]] = []
        wall = 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            units.clear()
            batch = await asyncio.gather(*(ask(client, port, question()) for _ in range(16)))
            wall += time.perf_counter() - t0
            many += batch
        ttft = [r["ttft_ms"] for r in many]
        out["users_16"] = {
            "n": len(ttft),
            "rounds": rounds,
            "ttft_ms_p50": round(pct(ttft, 0.5), 1),
            "ttft_ms_p95": round(pct(ttft, 0.95), 1),
            "ttft_ms_max": round(max(ttft), 1),
            "total_ms_p50": round(pct([r["total_ms"] for r in many], 0.5), 1),
            "sources_event_ms_p50": round(pct([r["sources_ms"] for r in many], 0.5), 1),
            "sources_event_ms_p95": round(pct([r["sources_ms"] for r in many], 0.95), 1),
            "token_events_per_s_total": round(sum(r["token_events"] for r in many) / wall, 1),
            "server_retrieval_ms_p50": pct(
                [r["server_timings"].get("retrieval_ms") or 0 for r in many], 0.5
            ),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--out", default="http_e2e.json")
    parser.add_argument("--client", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--client-timeout", type=float, default=300)
    parser.add_argument(
        "--switch-interval-ms", type=float, default=0, help="sys.setswitchinterval (0: keep)"
    )
    parser.add_argument("--http-only", action="store_true", help="skip the in-process timings")
    parser.add_argument(
        "--distinct-passages",
        action="store_true",
        help="16 users at once ask about 16 different documents (no shared prompt prefix)",
    )
    args = parser.parse_args()
    if args.client:
        measured = measure(args.client, args.dry_run, args.distinct_passages)
        print(json.dumps(asyncio.run(measured)), flush=True)
    else:
        serve(args)


if __name__ == "__main__":
    main()
