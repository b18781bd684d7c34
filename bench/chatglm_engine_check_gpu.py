"""Correctness of the fast forward on CUDA (the compiled Triton kernels, CUDA graphs, the
engine's look-ahead), which the CPU tests cannot reach: full-width ChatGLM2 (hidden 4,096,
ffn 13,696, vocab 65,024) with few layers, random weights, FP16 and INT4.

Per weight kind:
- logits of `EngineSteps` (what `generate` runs) against the eager model: a 2,000-token
  prompt (one prefill graph, the MLP one block of 2,000 rows, int4 weights dequantized
  whole), a 3,000-token prompt (chunks), then decode steps;
- greedy tokens of `generate`, of the engine with one stream and of the engine with a batch
  of 12 requests (prompts of 5 to 2,600 tokens, rows leaving at different steps), each token
  judged against the eager model's logits for the same prefix (teacher-forced): it must be
  the eager argmax or within 3 % of the logits' standard deviation of it (fp16 rounding
  flips near-ties);
- the batch again with `look_ahead=False`: queued before the engine starts, the schedule is
  the same, so the tokens must be identical; and `stats.steps_ahead` must be > 0;
- the Triton kernels must still be on at the end (a failing kernel turns them off, silently
  but for a log line, and the torch ops would then pass every check above).

    PYTHONPATH=. python3 bench/chatglm_engine_check_gpu.py --out $OUT/check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from kbqa.chatglm import ChatGLM2, triton_use
from kbqa.chatglm.batching import BatchEngine, Request
from kbqa.chatglm.config import PRESETS
from kbqa.chatglm.generate import EngineSteps

NEAR_TIE = 0.03  # a token within this many logit standard deviations of the eager argmax


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def eager_logits(model: ChatGLM2, ids: list[int]) -> torch.Tensor:
    """The eager model's logits for every position of `ids` (no cache): [S, V] fp32."""
    with torch.no_grad():
        x = torch.tensor([ids], device=model.device)
        return model(x)[0].float()


def judge(model: ChatGLM2, prompt: list[int], tokens: list[int]) -> dict[str, Any]:
    """Each generated token against the eager logits of its own prefix."""
    logits = eager_logits(model, prompt + tokens[:-1])[len(prompt) - 1 :]  # [n, V]
    chosen = logits.gather(1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0]
    gaps = (logits.max(1).values - chosen) / logits.std(1)
    return {
        "argmax": int((gaps == 0).sum()),
        "n": len(tokens),
        "worst_gap_sd": round(float(gaps.max()), 4),
        "ok": bool(float(gaps.max()) <= NEAR_TIE),
    }


def prompt(n: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (n,), generator=g).tolist()


def logits_check(model: ChatGLM2, vocab: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for n in (2000, 3000):
        ids = prompt(n + 6, n, vocab)
        want = eager_logits(model, ids)
        steps = EngineSteps(model, 4096)
        t = torch.tensor(ids, device=model.device)
        with torch.no_grad():
            got = [steps.prefill(t[:n]).clone()]
            got += [steps.decode(t[p], p).clone() for p in range(n, n + 6)]
        errors = [rel(g, want[n - 1 + i]) for i, g in enumerate(got)]
        agree = sum(int(g.argmax()) == int(want[n - 1 + i].argmax()) for i, g in enumerate(got))
        found[f"prompt_{n}"] = {
            "prefill_rel": round(errors[0], 6),
            "decode_rel_max": round(max(errors[1:]), 6),
            "argmax_agree": f"{agree}/{len(got)}",
            "ok": max(errors) < 1e-2,
        }
        del steps
    return found


def batch(vocab: int) -> list[tuple[list[int], int]]:
    lengths = [5, 300, 1500, 2000, 2600, 17, 700, 2048, 64, 1200, 2001, 33]
    news = [8, 40, 24, 16, 30, 40, 12, 20, 36, 28, 10, 40]
    pairs = enumerate(zip(lengths, news, strict=True))
    return [(prompt(n, 100 + i, vocab), k) for i, (n, k) in pairs]


def run_batch(
    model: ChatGLM2, jobs: list[tuple[list[int], int]], look_ahead: bool
) -> tuple[list[list[int]], dict[str, int]]:
    engine = BatchEngine(model, max_batch=16, max_seq=4096, look_ahead=look_ahead)
    requests: list[Request] = [engine.submit(p, max_new_tokens=k, stop_ids=[]) for p, k in jobs]
    engine.start()  # everything queued first: the same schedule with and without look-ahead
    try:
        tokens = [r.result(timeout=300) for r in requests]
    finally:
        engine.close()
    stats = {"steps_ahead": engine.stats.steps_ahead, "decode_steps": engine.stats.decode_steps}
    return tokens, stats


def tokens_check(model: ChatGLM2, vocab: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    p = prompt(2000, 9, vocab)
    gen = list(model.generate(p, max_new_tokens=24, temperature=0.0, eos_token_ids=[], fast=True))
    found["generate"] = judge(model, p, gen)
    one, stats = run_batch(model, [(p, 24)], look_ahead=True)
    found["engine_1"] = {**judge(model, p, one[0]), **stats, "same_as_generate": one[0] == gen}
    jobs = batch(vocab)
    ahead, stats = run_batch(model, jobs, look_ahead=True)
    plain, plain_stats = run_batch(model, jobs, look_ahead=False)
    judged = [judge(model, q, t) for (q, _), t in zip(jobs, ahead, strict=True)]
    found["engine_batch"] = {
        "ok": all(j["ok"] for j in judged),
        "argmax": sum(j["argmax"] for j in judged),
        "n": sum(j["n"] for j in judged),
        "worst_gap_sd": max(j["worst_gap_sd"] for j in judged),
        "lengths_ok": all(len(t) == k for (_, k), t in zip(jobs, ahead, strict=True)),
        **stats,
    }
    found["look_ahead_vs_without"] = {
        "identical": ahead == plain,
        "rows_differing": sum(a != b for a, b in zip(ahead, plain, strict=True)),
        "steps_ahead_without": plain_stats["steps_ahead"],
        "ok": ahead == plain and stats["steps_ahead"] > 0 and plain_stats["steps_ahead"] == 0,
    }
    return found


def oks(found: Any) -> list[bool]:
    """Every "ok" in a part's results."""
    if not isinstance(found, dict):
        return []
    here = [bool(found["ok"])] if "ok" in found else []
    return here + [ok for value in found.values() for ok in oks(value)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="chatglm_engine_check.json")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--config", default="chatglm2-6b", help="tiny: a CPU smoke run")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    results: dict[str, Any] = {"card": torch.cuda.get_device_name() if cuda else "cpu"}
    failed = False
    for quantize in (None, "int4"):
        name = quantize or "fp16"
        torch.manual_seed(0)
        config = {**PRESETS[args.config], "num_layers": args.layers, "seq_length": 8192}
        dtype = torch.float16 if cuda else torch.float32
        model = ChatGLM2.from_config(config, device=args.device, dtype=dtype, quantize=quantize)
        vocab = model.config.padded_vocab_size
        for part, fn in (("logits", logits_check), ("tokens", tokens_check)):
            t0 = time.perf_counter()
            try:
                results[f"{name}.{part}"] = fn(model, vocab)
            except Exception as e:  # recorded; the next part still runs
                results[f"{name}.{part}"] = {"error": repr(e)[-1500:], "ok": False}
            print(f"[{name}.{part}] {time.perf_counter() - t0:.1f}s", results[f"{name}.{part}"])
            failed |= not all(oks(results[f"{name}.{part}"]))
        del model
        if cuda:
            torch.cuda.empty_cache()
    results["kernels_turned_off"] = list(triton_use._turned_off)
    failed |= bool(triton_use._turned_off)
    results["passed"] = not failed
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
