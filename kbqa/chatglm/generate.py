"""Token generation over the KV cache: one prefill, then one-token decode steps.

`generate` yields new token ids as Python ints. It stops at an eos id (not yielded), after
max_new_tokens, when `stop(generated_ids)` returns True (the last token is yielded first), or
when `cancel` is set. Stop strings belong to the text layer, which passes them as `stop`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from kbqa.chatglm.fast import decode_steps
from kbqa.chatglm.model import ChatGLM2Model

CACHE_ROUNDING = 256  # cache lengths are rounded up so that nearby requests reuse one cache


def sample_next(
    logits: Tensor,
    seen: Tensor,
    temperature: float,
    top_p: float,
    top_k: int,
    repetition_penalty: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Pick the next token from logits [V] (0-dim long tensor). seen [V] bool marks the ids of
    the prompt and the output so far, for the repetition penalty.

    Order as in transformers: repetition penalty, temperature, top-k, top-p. Branches depend on
    the settings only, never on data.
    """
    logits = logits.float()
    if repetition_penalty != 1.0:
        penalised = torch.where(
            logits > 0, logits / repetition_penalty, logits * repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if temperature == 0:
        return logits.argmax()
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(descending=True)  # [V] each
        probs = ordered.softmax(-1)
        # Drop a token when the ones before it already reach top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, ordered)
    probs = logits.softmax(-1)
    # argmax(p / E) with E ~ Exp(1) draws from p (fixed shapes, no host sync, unlike multinomial).
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax()


def _cancelled(cancel: threading.Event | Callable[[], bool] | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


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
    fast: the fused, CUDA-graph steps of fast.py (None: on CUDA when Triton is there).
    """
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
        raise ValueError(
            "need temperature >= 0, 0 < top_p <= 1, top_k >= 0 and repetition_penalty > 0"
        )
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
    return _generate(
        model, ids, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, eos,
        stop, cancel, fast,
    )  # fmt: skip


def _generate(
    model: ChatGLM2Model,
    ids: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    repetition_penalty: float,
    seed: int | None,
    eos: set[int],
    stop: Callable[[list[int]], bool] | None,
    cancel: threading.Event | Callable[[], bool] | None,
    fast: bool | None,
) -> Iterator[int]:
    # A separate generator function so that generate()'s argument errors raise at the call.
    if max_new_tokens <= 0 or _cancelled(cancel):
        return
    device = model.device
    prompt_len = ids.numel()
    needed = prompt_len + max_new_tokens
    if model.max_batch_size < 1 or model.max_seq_length < needed:
        rounded = -(-needed // CACHE_ROUNDING) * CACHE_ROUNDING
        model.setup_caches(1, min(rounded, model.config.seq_length))
    owner = object()
    model.cache_owner = owner
    steps = decode_steps(model, fast)

    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    seen = torch.zeros(model.config.padded_vocab_size, dtype=torch.bool, device=device)
    seen[ids] = True

    def pick(logits: Tensor) -> Tensor:
        return sample_next(logits, seen, temperature, top_p, top_k, repetition_penalty, generator)

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
        if _cancelled(cancel):
            return
        if model.cache_owner is not owner:
            raise RuntimeError("another generation started on this model; this one was ended")
        seen.index_fill_(0, token.view(1), True)  # from the device token: no host copy
        with torch.no_grad():
            if ahead is None:
                ahead = steps.decode(token, prompt_len + step)
            token = pick(ahead)
