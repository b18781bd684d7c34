"""Is the engine's prefill bound by the GPU or by Python launching its kernels?

ChatGLM2-6B, random FP16 weights, the BatchEngine's prefill of one whole prompt of `--tokens`:
the eager fused pass (Prefiller) and the CUDA graph replay (PrefillGraphs). For each: wall time
(the call, then a synchronisation); for the eager pass also the GPU's own time (CUDA events
around it while a ~100 ms sleep kernel holds the GPU until every kernel is queued: no launch
gaps); both again while another Python thread spins, as a server's other threads may; and how
far the graph's logits and cache entries are from the eager pass's.

    PYTHONPATH=. python3 bench/prefill_launch_gpu.py --out $OUT/prefill_launch.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import torch

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.batched_prefill import Segment
from kbqa.chatglm.batching import BatchEngine


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1574, 512, 64])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default="prefill_launch.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ChatGLM2.from_config("chatglm2-6b", device="cuda", dtype=torch.float16)
    print("model ready", flush=True)
    engine = BatchEngine(model, max_batch=16, max_seq=2048)
    engine.prefiller([Segment(torch.arange(37, device="cuda"), 0, 0, logits=True)])
    engine.prefiller([Segment(torch.arange(4, device="cuda"), 0, 0, logits=True)])
    print("prefiller ready", flush=True)
    prefiller = engine.prefiller
    R: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}

    def segment(n: int) -> list[Segment]:
        ids = torch.randint(0, 60000, (n,), device="cuda")
        return [Segment(ids, 0, 0, logits=True)]

    def wall(n: int) -> float:
        seg = segment(n)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        prefiller(seg)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    def span(n: int, hold: bool) -> tuple[float, float]:
        seg = segment(n)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        if hold:
            torch.cuda._sleep(200_000_000)
        start.record()
        t0 = time.perf_counter()
        prefiller(seg)
        end.record()
        end.synchronize()
        return start.elapsed_time(end), (time.perf_counter() - t0) * 1e3

    graphs = engine.prefill_graphs
    assert graphs is not None
    t0 = time.perf_counter()
    graphs.capture_all()
    R["capture_all_s"] = round(time.perf_counter() - t0, 2)
    R["graphs"] = graphs.graphs

    def graphed(n: int) -> float:
        ids = segment(n)[0].ids
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graphs(ids, 1)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    def beside_spinner(run: Any, n: int, reps: int) -> float:
        stop = threading.Event()

        def spin() -> None:
            x = 0
            while not stop.is_set():
                x += 1

        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            return pct([run(n) for _ in range(reps)], 0.5)
        finally:
            stop.set()
            spinner.join()

    for n in args.tokens:
        for _ in range(3):
            wall(n)
            graphed(n)
        walls = [wall(n) for _ in range(args.reps)]
        held = [span(n, True)[0] for _ in range(args.reps)]
        graph_walls = [graphed(n) for _ in range(args.reps)]
        ids = segment(n)[0].ids
        eager = prefiller([Segment(ids, 0, 0, logits=True)])
        assert eager is not None
        replayed = graphs(ids, 1)
        assert replayed is not None
        k0, k1 = engine.cache.k[:, 0, :, :n].float(), engine.cache.k[:, 1, :, :n].float()
        R[str(n)] = {
            "eager_wall_ms_p50": round(pct(walls, 0.5), 2),
            "eager_wall_ms_max": round(max(walls), 2),
            "gpu_own_ms_p50 (held)": round(pct(held, 0.5), 2),
            "graph_wall_ms_p50": round(pct(graph_walls, 0.5), 2),
            "graph_wall_ms_max": round(max(graph_walls), 2),
            "graph_beside_spinning_thread_ms_p50": round(beside_spinner(graphed, n, 5), 2),
            "eager_beside_spinning_thread_ms_p50": round(beside_spinner(wall, n, 2), 2),
            "logits_max_abs_diff_graph_vs_eager": float((eager[0] - replayed).abs().max()),
            "argmax_equal": bool(eager[0].argmax() == replayed.argmax()),
            "cache_k_max_abs_diff": float((k0 - k1).abs().max()),
        }
        print(n, R[str(n)], flush=True)
    Path(args.out).write_text(json.dumps(R, indent=1))


if __name__ == "__main__":
    main()
