"""The Triton kernels (kernels.py, attn_kernels.py, batched_kernels.py) against the eager model
and the torch ops of the fast forward, run on the CPU by Triton's interpreter with tiny shapes.

The interpreter must be on before Triton compiles anything, so the tests below run only with
TRITON_INTERPRET=1 set; `test_kernels_under_the_interpreter` runs this file again in such a
process (what CI does, where triton is installed with the dev extra). On CUDA the compiled
kernels are checked by bench/chatglm_engine_gpu.py and bench/int4_kernel_check_gpu.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fast_checks import CONFIG, PROMPT, gemv_error, steps_error
from naive_chatglm import randomize

from kbqa.chatglm import ChatGLM2, fused, triton_use
from kbqa.chatglm.batched import key_bucket
from kbqa.chatglm.forward import Forward, Segment, SlotCache
from kbqa.chatglm.quantize import dequantize_weight, quantize_weight

HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(
    not (HAVE_TRITON and INTERPRETED), reason="runs under TRITON_INTERPRET=1 (see below)"
)
# Two layers, 4 heads over 2 groups, ffn 96 and vocab 96: partial blocks in every kernel.
SMALL = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
         "multi_query_group_num": 2, "ffn_hidden_size": 96, "padded_vocab_size": 96,
         "seq_length": 512}  # fmt: skip


@pytest.mark.skipif(not HAVE_TRITON or INTERPRETED, reason="needs triton; starts the run below")
def test_kernels_under_the_interpreter() -> None:
    root = Path(__file__).parent.parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    this = Path(__file__).relative_to(root).as_posix()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", this]
    command += ["--deselect", f"{this}::test_kernels_under_the_interpreter"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, summary


@interpreted
@pytest.mark.parametrize("bits", [16, 8, 4])
def test_fast_path_gemv(bits: int) -> None:
    for variant in ("none", "norm", "glu"):
        assert gemv_error(bits, variant) < 1e-5, variant


@interpreted
@pytest.mark.parametrize(("quantize", "pre_seq_len"), [(None, None), ("int4", None), (None, 3)])
def test_fast_path_steps(quantize: str | None, pre_seq_len: int | None) -> None:
    """Chunked prefill (chunks of 32, the MLP over 16 rows) and decode of one row: GEMVs,
    norms, rotary and cache writes, both attention kernels (behind a P-tuning prefix too),
    int4 dequantization and the tiled int4 matmul."""
    assert steps_error(quantize, pre_seq_len, chunk=32) < 1e-5


@interpreted
@pytest.mark.parametrize(("quantize", "chunk"), [(None, 79), ("int4", 32)])
def test_fast_path_steps_with_the_mlp_in_column_blocks(quantize: str | None, chunk: int) -> None:
    """A long prompt's chunks run their MLP over 40 of the 96 intermediate features at a
    time: gate/up rows of h_to_4h and column blocks of 4h_to_h (int4 words copied) through
    the kernels, a last chunk of one row through the GEMV."""
    assert steps_error(quantize, chunk=chunk, mlp_columns=40) < 1e-5


@interpreted
def test_chunks_at_a_position_read_on_the_device_match_the_eager_model() -> None:
    """Forward.prefill_at, what a chunk's CUDA graph runs: the prefill attention kernel reads
    the chunk's first slot from device memory (FIRST_IN_MEMORY), the first chunk too."""
    torch.manual_seed(4)
    model = ChatGLM2.from_config(CONFIG)
    ids = torch.randint(0, CONFIG["padded_vocab_size"], (PROMPT,))
    model.setup_caches(1, 256)
    want = model(ids.view(1, -1), torch.arange(PROMPT))[0, -1].float()
    forward = Forward(model, SlotCache(model, 1, 256))
    for c0 in range(0, PROMPT, 40):
        got = forward.prefill_at(ids[c0 : c0 + 40], torch.tensor([c0]), 0, mlp_columns=40)
    assert float((got[0] - want).norm() / want.norm()) < 1e-5


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_int4_matmul_matches_the_dequantized_weights(dtype: torch.dtype) -> None:
    """kernels.int4_linear at the GEMV's row counts (1, 2) and the tiled kernel's (3; 17 over
    two row tiles), K not a multiple of the tiles, with and without a bias."""
    from kbqa.chatglm import kernels

    g = torch.Generator().manual_seed(0)
    n, k = 40, 200  # 25 int32 words a row
    weight, scale = quantize_weight(torch.randn(n, k, generator=g), 4)
    w = dequantize_weight(weight, scale, 4, torch.float64)
    for rows, bias in ((1, True), (2, False), (3, True), (17, False)):
        x = torch.randn(rows, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype) if bias else None
        expected = F.linear(x.double(), w, b.double() if b is not None else None)
        got = kernels.int4_linear(x, weight.view(torch.int32), scale, b)
        assert got.dtype == dtype
        tol = 1e-4 if dtype == torch.float32 else 2e-3  # sums of 200 products
        torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)


def _decode_both_ways(
    model: ChatGLM2, lengths: list[int], max_seq: int, tokens: list[int], rows: list[int]
) -> None:
    """Prefill rows of the given lengths, then decode one token per batch row with the kernels
    and with the torch ops (the kernels turned off) from the same cache: same logits and
    cache writes. `rows`: the cache row each batch row writes into (the scratch row for
    padding)."""
    cache = SlotCache(model, max_batch=len(tokens), max_seq=max_seq)
    forward = Forward(model, cache)
    g = torch.Generator().manual_seed(6)
    for row, n in enumerate(lengths):
        forward.prefill([Segment(torch.randint(3, 96, (n,), generator=g), 0, row, logits=False)])
    before = cache.k.clone(), cache.v.clone()
    pos = torch.tensor(lengths + [0] * (len(tokens) - len(lengths)))
    args = torch.tensor(tokens), pos, torch.tensor(rows)
    n_keys = key_bucket(cache.prefix + max(lengths) + 1, cache.slots)
    triton_use._turned_off.append("the reference")
    try:
        expected = forward.decode(*args, n_keys=n_keys)
    finally:
        triton_use._turned_off.clear()
    expected_cache = cache.k.clone(), cache.v.clone()
    cache.k.copy_(before[0])
    cache.v.copy_(before[1])
    got = forward.decode(*args, n_keys=n_keys)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.k, expected_cache[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.v, expected_cache[1], atol=1e-5, rtol=1e-5)


@interpreted
@pytest.mark.parametrize("quantize", [None, "int4"])
def test_decode_of_several_rows_matches_the_torch_ops(quantize: str | None) -> None:
    """Three sequences padded to four rows, the fourth writing into the scratch row (4): the
    skinny matmul, or the tiled int4 matmul, between norms, rotary, cache writes, attention."""
    torch.manual_seed(0)
    tiny = ChatGLM2.from_config(SMALL, dtype=torch.float32, quantize=quantize)
    _decode_both_ways(tiny, [5, 9, 3], 64, [11, 22, 33, 0], [0, 1, 2, 4])


@interpreted
def test_decode_over_long_rows_and_a_prefix_matches_the_torch_ops() -> None:
    """Rows of very different lengths (attention split into pieces that short rows skip),
    behind a P-tuning prefix, at a batch that is not a power of two."""
    torch.manual_seed(0)
    tiny = ChatGLM2.from_config({**SMALL, "pre_seq_len": 3}, dtype=torch.float32)
    randomize(tiny, 7)
    _decode_both_ways(tiny, [150, 4, 70, 201, 1], 300, [5, 6, 7, 8, 9], [0, 1, 2, 3, 4])


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_int4_dequant_kernel_is_bit_exact(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    for rows, cols in ((48, 600), (20, 32)):  # neither a multiple of the kernel's tiles
        weight, scale = quantize_weight(torch.randn(rows, cols), 4)
        expected = dequantize_weight(weight, scale, 4, dtype)
        words = weight.view(torch.int32)  # [N, K/8], as the fast forward holds them
        assert torch.equal(fused.dequantize(words, scale, 4, dtype), expected)


@interpreted
@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("bias", [True, False])
def test_skinny_matmul_matches_linear(rows: int, bias: bool) -> None:
    from kbqa.chatglm.batched_kernels import skinny_linear

    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 80, generator=g)  # K not a multiple of the block: masked tail
    weight = torch.randn(40, 80, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    torch.testing.assert_close(skinny_linear(x, weight, b), F.linear(x, weight, b))
