"""A long prompt prefilled in chunks (generate.EngineSteps: chunks of PREFILL_CHUNK tokens,
each chunk's MLP in blocks of MLP_COLUMNS intermediate features, forward.py) computes what
one pass over the whole prompt does: the same logits and the same keys and values in the
cache, exactly up to float64 rounding, for chunk and block sizes that do and do not divide
the prompt and the MLP.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.config import PRESETS
from kbqa.chatglm.forward import Forward, Segment, SlotCache
from kbqa.chatglm.generate import EagerSteps, EngineSteps
from kbqa.chatglm.prefill_graphs import ChunkGraphs

CONFIG = {**PRESETS["tiny"], "ffn_hidden_size": 96, "padded_vocab_size": 300}
PROMPT = 90


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def chunked(
    model: ChatGLM2, ids: Tensor, chunk: int, columns: int | None
) -> tuple[Tensor, SlotCache]:
    """The last token's logits [V] and the cache after prefilling ids in chunks."""
    cache = SlotCache(model, 1, 128)
    forward = Forward(model, cache)
    logits = None
    for c0 in range(0, ids.numel(), chunk):
        piece = Segment(ids[c0 : c0 + chunk], c0, 0, logits=True)
        logits = forward.prefill([piece], mlp_rows=chunk, mlp_columns=columns)
    assert logits is not None
    return logits[0], cache


@pytest.mark.parametrize(("chunk", "columns"), [(90, 8), (32, 24), (17, 40), (45, None), (1, 96)])
def test_chunks_with_the_mlp_in_column_blocks_equal_one_pass(
    chunk: int, columns: int | None
) -> None:
    torch.manual_seed(1)
    model = ChatGLM2.from_config(CONFIG, dtype=torch.float64)
    ids = torch.randint(0, CONFIG["padded_vocab_size"], (PROMPT,))
    whole, whole_cache = chunked(model, ids, PROMPT, None)
    parts, parts_cache = chunked(model, ids, chunk, columns)
    assert rel(parts, whole) < 1e-12
    used = slice(0, PROMPT)  # slots past the prompt stay zero in both
    assert rel(parts_cache.k[:, :, :, used], whole_cache.k[:, :, :, used]) < 1e-12
    assert rel(parts_cache.v[:, :, :, used], whole_cache.v[:, :, :, used]) < 1e-12


@pytest.mark.parametrize("prefix", [None, 3])
def test_chunks_at_positions_read_on_the_device_equal_one_pass(prefix: int | None) -> None:
    """Forward.prefill_at (what a chunk's CUDA graph runs: the position a tensor, attention
    through the kernel's path for every chunk) gives what one pass does, behind a P-tuning
    prefix too."""
    torch.manual_seed(3)
    model = ChatGLM2.from_config({**CONFIG, "pre_seq_len": prefix}, dtype=torch.float64)
    if model.transformer.prefix_encoder is not None:
        torch.nn.init.normal_(model.transformer.prefix_encoder.embedding.weight)
    ids = torch.randint(0, CONFIG["padded_vocab_size"], (PROMPT,))
    whole, whole_cache = chunked(model, ids, PROMPT, None)
    cache = SlotCache(model, 1, 128)
    forward = Forward(model, cache)
    for c0 in range(0, PROMPT, 30):
        logits = forward.prefill_at(ids[c0 : c0 + 30], torch.tensor([c0]), 0, mlp_columns=24)
    assert rel(logits[0], whole) < 1e-12
    assert rel(cache.k, whole_cache.k) < 1e-12 and rel(cache.v, whole_cache.v) < 1e-12


def test_a_prompt_past_the_graphs_limit_prefills_in_chunks_as_the_eager_model_does() -> None:
    """EngineSteps takes a prompt over 2,048 tokens in chunks (here of 700, the MLP over 40
    features at a time; whole chunks through ChunkGraphs, run eagerly here, the last, shorter
    one through Forward.prefill) and gives the eager model's logits; a column block that does
    not start on an int4 word is refused."""
    torch.manual_seed(2)
    model = ChatGLM2.from_config({**CONFIG, "seq_length": 4096}, dtype=torch.float64)
    ids = torch.randint(0, CONFIG["padded_vocab_size"], (2100 - 1,))
    steps = EngineSteps(model, 2112)
    steps.chunk, steps.mlp_columns = 700, 40
    steps.chunks = ChunkGraphs(steps.forward, 700, 0, 40, capture=False)
    got = steps.prefill(ids)
    model.setup_caches(1, 2112)
    assert rel(got.double(), EagerSteps(model).prefill(ids).double()) < 1e-10
    with pytest.raises(ValueError, match="multiple of 8"):
        steps.forward.layers[0].h4_to_h.columns(4, 12)
    with pytest.raises(ValueError, match="a chunk of 5 tokens"):
        steps.chunks(ids[:5], 0)
