"""The row-parallel linear of tensor parallelism (tensor_parallel.py), in a module of its own so
that the fast forward's ops (fused.py) can recognise it without importing the launcher."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn


class RowParallelLinear(nn.Module):
    """A row-parallel linear: this rank's input columns, then the sum over ranks (the one
    all-reduce of its block half); the bias, replicated, is added once after the sum."""

    def __init__(self, local: nn.Module, bias: Tensor | None) -> None:
        super().__init__()
        self.local: nn.Module = local
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.local(x)  # [B, S, hidden]: this rank's partial sum
        dist.all_reduce(y)
        return y if self.bias is None else y + self.bias
