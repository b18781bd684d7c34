"""Whether the Triton kernels run: the one switch for every fast path of this package.

They run on CUDA tensors when `triton` is installed, unless KBQA_NO_TRITON=1 (then every
path uses the plain-torch ops, e.g. on a Triton the kernels were not built for); and on any
device under TRITON_INTERPRET=1, Triton's CPU interpreter, which is how the tests run them.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def triton_installed() -> bool:
    """Triton is importable and not switched off by KBQA_NO_TRITON=1."""
    switched_off = os.environ.get("KBQA_NO_TRITON") == "1"
    return not switched_off and importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_run_on(device: torch.device) -> bool:
    """Whether the kernels run on tensors of `device`."""
    return triton_installed() and (device.type == "cuda" or interpreted())
