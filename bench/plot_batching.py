"""Plot the continuous-batching runs recorded in bench/results (no GPU needed).

Left: aggregate decode tokens/s against concurrent streams, with the goals (12× at 16, 40× at
64 streams, of the one-at-a-time single stream). Right: time to first token (p95) of a burst
of N prompts of 2,000 tokens, before and after whole prompts became CUDA graph replays.

    .venv/bin/python bench/plot_batching.py   # writes bench/batching.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RUNS = {
    "third run (eager chunked prefill)": "chatglm_batching_h100_2026-11-25_skinny.json",
    "fourth run (graphed prompts)": "chatglm_batching_h100_2026-11-25_graphs.json",
}
COUNTS = [1, 4, 16, 64]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / "results" / name).read_text())
    return data


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, name in RUNS.items():
        run = load(name)
        rows = [run[f"fp16_n{n}"] for n in COUNTS]
        speed.plot(COUNTS, [r["steady_decode_tok_s"] for r in rows], "o-", label=label)
        ttft.plot(COUNTS, [r["ttft_p95_ms"] / 1e3 for r in rows], "o-", label=label)
    single = load(RUNS["fourth run (graphed prompts)"])["fp16_one_at_a_time_fast"]["decode_tok_s"]
    speed.plot([16, 64], [12 * single, 40 * single], "k_", markersize=18, mew=2, label="goal")
    speed.plot(COUNTS, [n * single for n in COUNTS], ":", color="grey", label="N × one stream")
    for ax in (speed, ttft):
        ax.set_xscale("log", base=2)
        ax.set_xticks(COUNTS, [str(n) for n in COUNTS])
        ax.set_xlabel("concurrent streams (2k context)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    speed.set_yscale("log")
    speed.set_ylabel("aggregate decode tokens/s")
    speed.set_title("ChatGLM2-6B FP16, H100: decode throughput")
    ttft.set_ylabel("time to first token, p95 (s)")
    ttft.set_title("a burst of N prompts submitted at once")
    fig.tight_layout()
    fig.savefig(HERE / "batching.png", dpi=110)


if __name__ == "__main__":
    main()
