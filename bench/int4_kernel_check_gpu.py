"""Check the batched engine's int4 matmul (kernels.int4_linear) on a GPU against the dequantized
reference, in fp16 and bf16, at the row counts serving uses (1–64). CPU CI runs it only under
the Triton interpreter, whose bf16 `tl.dot` is unusable, so bf16 is checked here.

    python3 bench/int4_kernel_check_gpu.py        # prints one line per case, exits 1 on a miss
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kbqa.chatglm.kernels import int4_linear
from kbqa.chatglm.quantize import dequantize_weight, quantize_weight

SHAPES = ((4096, 4096), (13696 * 2, 4096), (4096, 13696))
"""ChatGLM2-6B's projections: (out features, in features)."""


def main() -> int:
    torch.manual_seed(0)
    failures = 0
    for dtype in (torch.float16, torch.bfloat16):
        for n, k in SHAPES:
            weight = torch.randn(n, k, device="cuda") * 0.02
            packed, scale = quantize_weight(weight, 4)
            words = packed.view(torch.int32)
            reference_weight = dequantize_weight(packed, scale, 4, dtype)
            for rows in (1, 2, 3, 8, 16, 33, 64):
                x = torch.randn(rows, k, device="cuda", dtype=dtype)
                expected = (x.float() @ reference_weight.float().T).to(dtype)
                got = int4_linear(x, words, scale.to(dtype), None)
                error = (got.float() - expected.float()).abs().max().item()
                bound = 2e-2 * expected.float().abs().max().item() + 1e-2
                ok = error <= bound
                failures += not ok
                print(f"{dtype!s:15} n={n:6} k={k:6} rows={rows:3} max|err|={error:.4g} "
                      f"bound={bound:.4g} {'ok' if ok else 'MISMATCH'}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
