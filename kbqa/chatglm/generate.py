"""Token generation for one sequence: one prefill, then one-token decode steps.

`generate` yields new token ids as Python ints. It stops at an eos id (not yielded), after
max_new_tokens, when `stop(generated_ids)` returns True (the last token is yielded first), or
when `cancel` is set. Stop strings belong to the text layer, which passes them as `stop`.
Which steps run is `steps_for`'s choice (README.md, "Which code runs").
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from kbqa.chatglm.batched import DecodeStep
from kbqa.chatglm.forward import MLP_COLUMNS, Forward, Segment, SlotCache
from kbqa.chatglm.fused import triton_for
from kbqa.chatglm.model import ChatGLM2Model
from kbqa.chatglm.prefill_graphs import MAX_TOKENS as GRAPHED_PROMPT_TOKENS
from kbqa.chatglm.prefill_graphs import ChunkGraphs, PrefillGraphs
from kbqa.chatglm.sampling import SamplingParams, sample_rows

CACHE_ROUNDING = 256  # cache lengths are rounded up so that nearby requests reuse one cache
# Prompts longer than the prefill graphs take go in chunks of this many tokens (each chunk's
# MLP in blocks of forward.MLP_COLUMNS features), so that a chunk's activations stay ~43 MB
# beside fp16's 12.49 GB of weights and 0.24 GB of cache at 8k. Every chunk reads all the
# weights once: 256-token chunks made an 8k prompt cost 6.4x per token what a 2k one does,
# 1,024-token ones 2.7x (eager, H200, bench/RESULTS.md). Quantized weights are dequantized
# once per chunk, so they take longer chunks (4 GB of weights leave their memory room).
PREFILL_CHUNK = 1024
QUANTIZED_PREFILL_CHUNK = 2048


class EagerSteps:
    """The model's own forward over its own cache (the reference, and the path off CUDA).
    Both kinds of steps run one sequence; both return fp32 logits [V] of its last token."""

    def __init__(self, model: ChatGLM2Model) -> None:
        self.model = model

    def prefill(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.numel(), device=ids.device)  # [S]
        return self.model(ids.view(1, -1), positions, last_logits_only=True)[0, -1].float()

    def decode(self, token: Tensor, pos: int) -> Tensor:
        position = torch.tensor([pos], device=token.device)  # [1]
        return self.model(token.view(1, 1), position)[0, -1].float()


class EngineSteps:
    """The batching engine's parts with one cache row: the fast forward (forward.py), and on
    CUDA its decode step and prompts as graphs (README.md, "Which code runs")."""

    def __init__(self, model: ChatGLM2Model, max_seq: int) -> None:
        self.cache = SlotCache(model, 1, max_seq)
        self.forward = Forward(model, self.cache)
        self.decoder = DecodeStep(model, self.forward)
        self.graphs: PrefillGraphs | None = None
        quantized = self.forward.layers[0].qkv.bits != 16
        self.chunk = QUANTIZED_PREFILL_CHUNK if quantized else PREFILL_CHUNK
        self.mlp_columns = MLP_COLUMNS
        # Whole chunks of a long prompt as one graph replay each (captured when first needed).
        self.chunks: ChunkGraphs | None = None
        if self.decoder.cuda_graphs:
            self.graphs = PrefillGraphs(self.forward, max_tokens=GRAPHED_PROMPT_TOKENS)
            self.chunks = ChunkGraphs(self.forward, self.chunk, 0, self.mlp_columns)

    def prefill(self, ids: Tensor) -> Tensor:
        seq = ids.numel()
        if self.graphs is not None and self.graphs.fits(seq):
            logits = self.graphs(ids, 0)
            if logits is not None:
                return logits
        if seq <= GRAPHED_PROMPT_TOKENS:  # whole, as the graphs would (their MLP one block)
            found = self.forward.prefill([Segment(ids, 0, 0, logits=True)])
            assert found is not None
            return found[0]
        logits = None
        for c0 in range(0, seq, self.chunk):
            piece = ids[c0 : c0 + self.chunk]
            chunks = self.chunks
            if chunks is not None and chunks.enabled and piece.numel() == chunks.size:
                logits = chunks(piece, c0)
                if logits is not None:
                    continue
            segment = Segment(piece, c0, 0, logits=c0 + self.chunk >= seq)
            found = self.forward.prefill(
                [segment], mlp_rows=self.chunk, mlp_columns=self.mlp_columns
            )
            logits = found[0] if found is not None else None
        assert logits is not None
        return logits

    def decode(self, token: Tensor, pos: int) -> Tensor:
        return self.decoder(token.view(1), [pos])[0]


_ENGINES: weakref.WeakKeyDictionary[ChatGLM2Model, tuple[tuple[int, ...], EngineSteps]] = (
    weakref.WeakKeyDictionary()
)


def engine_supported(model: ChatGLM2Model) -> bool:
    """Whether `fast=None` picks the engine: the kernels run on the model's device (CUDA; see
    triton_use.py), and the model has chatglm2's layout."""
    return (
        model.device.type == "cuda"
        and triton_for(model.transformer.rope) is not None
        and not model.config.apply_residual_connection_post_layernorm
    )


def steps_for(
    model: ChatGLM2Model, needed: int, fast: bool | None = None
) -> EagerSteps | EngineSteps:
    """Steps for a sequence of up to `needed` positions: EngineSteps when fast is True (or
    None and engine_supported), else the eager model. EngineSteps (with its graphs) is reused
    while the model's weights stay the same tensors and its cache is long enough."""
    rounded = min(-(-needed // CACHE_ROUNDING) * CACHE_ROUNDING, model.config.seq_length)
    if fast is False or (fast is None and not engine_supported(model)):
        if model.max_batch_size < 1 or model.max_seq_length < needed:
            model.setup_caches(1, rounded)
        return EagerSteps(model)
    key = tuple(t.data_ptr() for t in model.state_dict(keep_vars=True).values())
    cached = _ENGINES.get(model)
    if cached is not None and cached[0] == key and cached[1].cache.max_seq >= needed:
        return cached[1]
    _ENGINES.pop(model, None)  # its cache and graphs go before the new ones are allocated
    steps = EngineSteps(model, rounded)
    _ENGINES[model] = (key, steps)
    return steps


def generate(
    model: ChatGLM2Model,
    input_ids: Sequence[int] | Tensor,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.8,
    top_p: float = 0.8,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_token_ids: Iterable[int] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    fast: bool | None = None,
) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids after input_ids (a list or 1-D tensor).

    temperature 0 is greedy; top_k 0 and top_p 1 disable those filters; seed makes sampling
    reproducible; eos_token_ids defaults to the config's eos (2). Generation is capped at the
    model's seq_length. One generation at a time per model: starting another ends this one.
    fast: the engine's fast forward with one row (None: on CUDA when the kernels run).
    """
    params = SamplingParams(temperature, top_p, top_k, repetition_penalty, seed)  # checks them
    device = model.device
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device)
    if ids.ndim != 1 or ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty 1-D sequence, got shape {list(ids.shape)}")
    prompt_len = ids.numel()
    limit = model.config.seq_length
    if prompt_len >= limit:
        raise ValueError(f"prompt of {prompt_len} tokens leaves no room in seq_length {limit}")
    vocab = model.config.padded_vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"token ids must be in [0, {vocab})")
    max_new_tokens = min(max_new_tokens, limit - prompt_len)
    eos = set(eos_token_ids) if eos_token_ids is not None else {model.config.eos_token_id}
    cancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel
    return _generate(model, ids, max_new_tokens, params, eos, stop, cancelled, fast)


def _generate(
    model: ChatGLM2Model,
    ids: Tensor,
    max_new_tokens: int,
    params: SamplingParams,
    eos: set[int],
    stop: Callable[[list[int]], bool] | None,
    cancelled: Callable[[], bool] | None,
    fast: bool | None,
) -> Iterator[int]:
    # A separate generator function so that generate()'s argument errors raise at the call.
    if max_new_tokens <= 0 or (cancelled is not None and cancelled()):
        return
    device = model.device
    prompt_len = ids.numel()
    owner = object()
    model.cache_owner = owner
    steps = steps_for(model, prompt_len + max_new_tokens, fast)

    generator = params.generator(device)
    seen = torch.zeros(1, model.config.padded_vocab_size, dtype=torch.bool, device=device)
    seen[0, ids] = True

    def pick(logits: Tensor) -> Tensor:
        """logits [V] → the next token, a 0-dim tensor on the device."""
        return sample_rows(logits.view(1, -1), [params], seen, [generator])[0]

    # On CUDA the next step is queued before this token is read back, so the device runs
    # while the host waits, yields and checks (if generation stops, one step was for nothing).
    # The token is copied out ahead of that step and waited for by an event: int(token)
    # would wait behind the queued step.
    ahead_of_host = device.type == "cuda"
    host_token = torch.empty(1, dtype=torch.long, pin_memory=ahead_of_host)
    with torch.no_grad():
        token = pick(steps.prefill(ids))  # from logits [V]
    generated: list[int] = []
    for step in range(max_new_tokens):
        ahead = None  # the next position's logits [V]
        if ahead_of_host and step < max_new_tokens - 1 and model.cache_owner is owner:
            host_token.copy_(token.view(1), non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            with torch.no_grad():
                ahead = steps.decode(token, prompt_len + step)
            copied.synchronize()
            token_id = int(host_token[0])
        else:
            token_id = int(token)
        if token_id in eos:
            return
        generated.append(token_id)
        yield token_id
        if step == max_new_tokens - 1 or (stop is not None and stop(generated)):
            return
        if cancelled is not None and cancelled():
            return
        if model.cache_owner is not owner:
            raise RuntimeError("another generation started on this model; this one was ended")
        seen[0].index_fill_(0, token.view(1), True)  # from the device token: no host copy
        with torch.no_grad():
            if ahead is None:
                ahead = steps.decode(token, prompt_len + step)
            token = pick(ahead)
