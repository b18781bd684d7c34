"""Whether the Triton kernels run: the one switch, and the one fallback policy, for every fast
path of this package.

They run on CUDA tensors when `triton` is installed, unless KBQA_NO_TRITON=1 (then every
path uses the plain-torch ops, e.g. on a Triton the kernels were not built for); and on any
device under TRITON_INTERPRET=1, Triton's CPU interpreter, which is how the tests run them.
A kernel that fails at run time turns them off for the process (`with_fallback`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger("kbqa.chatglm")
T = TypeVar("T")
_turned_off: list[str] = []  # why the kernels were turned off at run time, if they were


@functools.cache
def triton_installed() -> bool:
    """Triton is importable and not switched off by KBQA_NO_TRITON=1."""
    switched_off = os.environ.get("KBQA_NO_TRITON") == "1"
    return not switched_off and importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_run_on(device: torch.device) -> bool:
    """Whether the kernels run on tensors of `device`."""
    return not _turned_off and triton_installed() and (device.type == "cuda" or interpreted())


def with_fallback(run: Callable[[], T], device: torch.device, what: str) -> T:
    """run(); if it fails while the kernels run on `device` (a kernel that does not compile, a
    Triton it was not built for), turn them off for good and run it again on the torch ops,
    which must rewrite whatever the failed run wrote. Running out of memory is the input's
    fault, not the kernels': it is raised."""
    if not kernels_run_on(device):
        return run()
    try:
        return run()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:
        log.exception("%s failed in a Triton kernel; using the torch ops from now on", what)
        _turned_off.append(f"{what}: {e}")
    return run()
