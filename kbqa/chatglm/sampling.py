"""Next-token choice for a batch of sequences, each with its own sampling settings.

The one sampler: the batching engine samples its rows with it, single-stream `generate` its
one row. Order as in transformers: repetition penalty, temperature, top-k, top-p, then
argmax(p / E) with E ~ Exp(1), which draws from p with fixed shapes and no host
synchronisation (unlike multinomial), so that generate can queue the next step before it
reads a token back. A seeded request draws its noise from its own generator, one [V] row per
token, so a request gives the same tokens alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    """0 is greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k filtering."""
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if (
            self.temperature < 0
            or not 0 < self.top_p <= 1
            or self.top_k < 0
            or self.repetition_penalty <= 0
        ):
            raise ValueError(
                "need temperature >= 0, 0 < top_p <= 1, top_k >= 0 and repetition_penalty > 0"
            )
        # torch.Generator.manual_seed's range; checked here, in the caller's thread, rather
        # than where the batching engine makes the generator.
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must be in [-2**63, 2**64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A seeded request's own generator, or None (the global one)."""
        return None if self.seed is None else torch.Generator(device).manual_seed(self.seed)


def sample_rows(
    logits: Tensor,
    params: Sequence[SamplingParams],
    seen: Tensor | None,
    generators: Sequence[torch.Generator | None],
) -> Tensor:
    """logits [B, V] → token ids [B] (long). seen [B, V] bool marks each row's prompt and output
    ids (needed only when some row has a repetition penalty); generators[i] is row i's own
    generator for seeded sampling, or None for the global one."""
    logits = logits.float()
    device = logits.device

    def column(values: list[float]) -> Tensor:
        # Staged from pageable memory at once: the copy does not wait for queued work.
        host = torch.tensor(values, dtype=torch.float32).unsqueeze(1)  # [B, 1]
        return host.to(device, non_blocking=True)

    vocab = logits.shape[1]
    penalties = [p.repetition_penalty for p in params]
    if any(r != 1.0 for r in penalties):
        assert seen is not None, "a repetition penalty needs the ids each row has seen"
        rp = column(penalties)  # [B, 1]
        penalised = torch.where(logits > 0, logits / rp, logits * rp)
        logits = torch.where(seen & (rp != 1.0), penalised, logits)
    greedy = logits.argmax(-1)  # [B]
    sampling = [not p.greedy for p in params]
    if not any(sampling):
        return greedy

    scaled = logits / column([p.temperature if not p.greedy else 1.0 for p in params])
    if any(p.top_k > 0 for p in params):
        # The k-th largest value per row (k = V where top-k is off: nothing is below it).
        k = column([float(min(p.top_k, vocab) or vocab) for p in params]).long()  # [B, 1]
        kth = scaled.sort(dim=-1, descending=True).values.gather(1, k - 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = column([p.top_p for p in params])
        ordered, order = scaled.sort(dim=-1, descending=True)  # [B, V] each
        probs = ordered.softmax(-1)
        # Drop a token when the ones before it already reach top_p; rows with top_p 1 keep all
        # (their cumulative sum can round to 1 before the end).
        drop = (probs.cumsum(-1) - probs >= top_p) & (top_p < 1.0)
        ordered = ordered.masked_fill(drop, float("-inf"))
        scaled = torch.empty_like(scaled).scatter_(1, order, ordered)
    probs = scaled.softmax(-1)
    if all(g is None for g in generators):
        noise = torch.empty_like(probs).exponential_(1.0)  # [B, V]
    else:
        noise = torch.ones_like(probs)
        for i, generator in enumerate(generators):
            if sampling[i]:
                noise[i].exponential_(1.0, generator=generator)
    sampled = (probs / noise).argmax(-1)  # [B]
    is_greedy = column([float(not s) for s in sampling])[:, 0] > 0  # [B]
    return torch.where(is_greedy, greedy, sampled)
