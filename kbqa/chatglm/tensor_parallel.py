"""Tensor parallelism for the eager model over torch.distributed: one process per device, each
holding a slice of every layer, as in Megatron-LM.

Per layer, rank r of W keeps:
- query_key_value column-parallel: query heads [r·N/W, (r+1)·N/W) and the key/value groups
  they read. ChatGLM2-6B has N = 32 heads over G = 2 multi-query groups: with W = 2 each rank
  takes one group; with W > G the ranks whose heads read one group all hold a copy of it.
- dense (attention output) row-parallel: the input columns of its heads; the partial sums of
  all ranks are added by one all-reduce.
- dense_h_to_4h column-parallel: the same rows [r·F/W, (r+1)·F/W) of the gate half and of the
  up half, so that SwiGLU pairs each gate with its own up column on one rank.
- dense_4h_to_h row-parallel, then the block's second all-reduce.
Two all-reduces a layer, one per block half. Quantized layers slice their int8 words by rows
(column-parallel) or packed columns (row-parallel); the per-row scales stay valid for a slice
of a row, so every rank dequantizes exactly its part of the full weight.

The embedding, the norms and the output layer are replicated: every rank computes the full
logits and samples the same token (same seed), so no token has to be broadcast and sampling
stays the single-process code. Splitting the vocabulary would save 0.5 GB of fp16 per rank on
chatglm2-6b at the cost of gathering logits every step; that trade is for a GPU measurement.

`launch(work, world, …)` runs `work(rank, world, *args)` in `world` spawned processes (gloo
on the CPU; NCCL on CUDA, rank r on cuda:r, NVLink multicast off) and returns rank 0's result.
"""

from __future__ import annotations

import multiprocessing.process
import multiprocessing.queues
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from kbqa.chatglm.chatglm2 import ChatGLM2
from kbqa.chatglm.config import ChatGLM2Config
from kbqa.chatglm.model import ChatGLM2Model, SelfAttention
from kbqa.chatglm.parallel_linear import RowParallelLinear
from kbqa.chatglm.quantize import QuantizedLinear

T = TypeVar("T")
# How long the launcher waits, after one rank failed, for the others' reports.
FAILURE_GRACE_S = 10.0


def _rows(linear: nn.Linear | QuantizedLinear, rows: Tensor) -> nn.Linear | QuantizedLinear:
    """The output rows `rows` of a linear, as a new module."""
    bias = linear.bias[rows].clone() if linear.bias is not None else None
    part: nn.Linear | QuantizedLinear
    if isinstance(linear, QuantizedLinear):
        part = QuantizedLinear(linear.in_features, rows.numel(), bias is not None, linear.bits)
        part.weight, part.weight_scale = linear.weight[rows].clone(), linear.weight_scale[rows]
    else:
        part = nn.Linear(linear.in_features, rows.numel(), bias=bias is not None)
        part.weight = nn.Parameter(linear.weight[rows].clone(), requires_grad=False)
    if bias is not None:
        part.bias = nn.Parameter(bias, requires_grad=False)
    return part.to(linear.weight.device)


def _columns(linear: nn.Linear | QuantizedLinear, start: int, stop: int) -> RowParallelLinear:
    """Input columns [start, stop) of a linear, summed over ranks by a RowParallelLinear."""
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    part: nn.Module
    if isinstance(linear, QuantizedLinear):
        # int4 packs two columns a byte: the slice starts and ends on a byte (even columns).
        pack = 2 if linear.bits == 4 else 1
        if start % pack or stop % pack:
            raise ValueError(f"int4 columns {start}..{stop} do not fall on whole bytes")
        part = QuantizedLinear(stop - start, linear.out_features, False, linear.bits)
        part.weight = linear.weight[:, start // pack : stop // pack].clone()
        part.weight_scale = linear.weight_scale  # a row's scale holds for any slice of it
    else:
        part = nn.Linear(stop - start, linear.out_features, bias=False)
        part.weight = nn.Parameter(linear.weight[:, start:stop].clone(), requires_grad=False)
    return RowParallelLinear(part.to(linear.weight.device), bias)


def head_split(config: ChatGLM2Config, rank: int, world: int) -> tuple[range, range]:
    """The query heads and the key/value groups rank `rank` of `world` holds."""
    heads, groups = config.num_attention_heads, config.kv_groups
    if heads % world or (groups % world and world % groups):
        raise ValueError(
            f"{world} ranks cannot share {heads} heads in {groups} key/value groups "
            "(the heads must divide evenly, and the groups divide or be divided by the ranks)"
        )
    per_rank = heads // world
    local_heads = range(rank * per_rank, (rank + 1) * per_rank)
    per_group = heads // groups  # query heads reading one group
    first = local_heads.start // per_group
    last = (local_heads.stop - 1) // per_group
    return local_heads, range(first, last + 1)


def _shard_attention(attn: SelfAttention, config: ChatGLM2Config, rank: int, world: int) -> None:
    heads, groups = head_split(config, rank, world)
    n, g, d = config.num_attention_heads, config.kv_groups, config.kv_channels
    device = attn.dense.weight.device
    q = torch.arange(heads.start * d, heads.stop * d, device=device)
    k = n * d + torch.arange(groups.start * d, groups.stop * d, device=device)
    v = k + g * d
    # register_module: the model declares these as nn.Linear; quantized ones already differ.
    attn.register_module("query_key_value", _rows(attn.query_key_value, torch.cat([q, k, v])))
    attn.register_module("dense", _columns(attn.dense, heads.start * d, heads.stop * d))
    attn.n_head, attn.n_group = len(heads), len(groups)


def shard(model: ChatGLM2Model, rank: int, world: int) -> None:
    """Keep only rank `rank`'s slice of every layer (module docstring), in place. Run inside a
    process group of `world` ranks: the model's forward then all-reduces twice a layer."""
    cfg = model.config
    if cfg.pre_seq_len:
        raise ValueError("tensor parallelism does not take a P-tuning prefix")
    if cfg.ffn_hidden_size % world:
        raise ValueError(f"{world} ranks cannot share ffn_hidden_size {cfg.ffn_hidden_size}")
    width = cfg.ffn_hidden_size // world
    for layer in model.transformer.encoder.blocks():
        _shard_attention(layer.self_attention, cfg, rank, world)
        mlp = layer.mlp
        device = mlp.dense_4h_to_h.weight.device
        gate = torch.arange(rank * width, (rank + 1) * width, device=device)
        # [gate rows; up rows] of this rank: chunk(2) in MLP.forward pairs them again.
        up = gate + cfg.ffn_hidden_size
        mlp.register_module("dense_h_to_4h", _rows(mlp.dense_h_to_4h, torch.cat([gate, up])))
        mlp.register_module(
            "dense_4h_to_h", _columns(mlp.dense_4h_to_h, rank * width, (rank + 1) * width)
        )
    model.max_batch_size = model.max_seq_length = 0  # a cache set up before has the old shapes


# -- the launcher --------------------------------------------------------------------------


POLL_S = 1.0
"""How often the parent looks for a rank that died without reporting (killed, out of memory)."""


def _raise_if_died(
    processes: Sequence[multiprocessing.process.BaseProcess],
    results: multiprocessing.queues.Queue[tuple[int, bool, Any]],
) -> None:
    """Raise if a rank ended with a failure status and nothing of it is left to read."""
    dead = {rank: p.exitcode for rank, p in enumerate(processes) if p.exitcode not in (None, 0)}
    if dead and results.empty():
        codes = ", ".join(f"rank {rank}: exit status {code}" for rank, code in dead.items())
        raise RuntimeError(f"tensor-parallel rank ended without reporting ({codes})")


def _worker(
    rank: int,
    world: int,
    backend: str,
    port: int,
    results: multiprocessing.queues.Queue[tuple[int, bool, Any]],
    work: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    """One rank: join the group through the parent's store, run `work`, report, leave."""
    try:
        join_group(rank, world, backend, port, world_size=world + 1)
        try:
            result = work(rank, world, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle bytes: a tensor put as it is would travel as shared memory that this
        # process, about to exit, takes with it before the parent has read it.
        results.put((rank, True, pickle.dumps(result) if rank == 0 else None))
    except BaseException:  # reported to the parent, which raises it with the rank's traceback
        results.put((rank, False, traceback.format_exc()))


def join_group(
    rank: int,
    world: int,
    backend: str,
    port: int,
    timeout: timedelta | None = None,
    store: dist.TCPStore | None = None,
    *,
    world_size: int | None = None,
) -> torch.device:
    """Join the default process group as `rank` of `world` through the TCP store on `port`
    (a client of it, or `store` itself for the process that holds it; world_size: the store's
    clients, default `world`); returns this rank's device (cuda:rank with NCCL, else the CPU).
    timeout bounds every collective of the group (torch's default when None)."""
    device = torch.device("cpu")
    if backend == "nccl":
        # NVLink SHARP multicast (NVLS) stays off: it needs a fabric-manager set-up these
        # hosts lack. Set in the rank, so that a launching parent's environment is left as it was.
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    if store is None:
        store = dist.TCPStore("127.0.0.1", port, world_size or world, is_master=False)
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, **options)
    return device


def _failures(
    results: multiprocessing.queues.Queue[tuple[int, bool, Any]],
    failed: dict[int, str],
    world: int,
) -> str:
    """The message for the first failure plus those the other ranks report soon after (a
    rank's error often makes its peers fail in their next collective; the first report need
    not be the cause), each with its traceback, by rank."""
    for _ in range(world - len(failed)):
        try:
            rank, ok, value = results.get(timeout=FAILURE_GRACE_S)
        except queue.Empty:
            break
        if not ok:
            failed[rank] = value
    return "\n".join(f"tensor-parallel rank {r} failed:\n{failed[r]}" for r in sorted(failed))


def launch(
    work: Callable[..., T],
    world: int,
    *args: Any,
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> T:
    """Run `work(rank, world, *args)` in `world` new processes joined in one process group and
    return rank 0's result (which must pickle; tensors come back on the CPU best). `work` must
    be a module-level function. backend: "gloo" (CPU) or "nccl" (CUDA, rank r on cuda:r);
    None picks nccl when CUDA has `world` devices. A rank's exception is raised here with its
    traceback; timeout_s only bounds a hang (all processes are ended and joined either way).
    """
    if world < 1:
        raise ValueError(f"world must be at least 1, got {world}")
    if backend is None:
        backend = "nccl" if torch.cuda.device_count() >= world else "gloo"
    # The parent holds the rendezvous store on a port the OS picks, so no port can be taken
    # between choosing and binding it; the ranks connect to it as clients.
    store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False)
    context = mp.get_context("spawn")
    results: multiprocessing.queues.Queue[tuple[int, bool, Any]] = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(rank, world, backend, store.port, results, work, args),
            daemon=True,
        )
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    finished = False
    try:
        result: Any = None
        deadline = time.monotonic() + timeout_s
        reported = 0
        while reported < world:
            try:
                rank, ok, value = results.get(timeout=POLL_S)
            except queue.Empty:
                _raise_if_died(processes, results)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"tensor-parallel ranks still running after {timeout_s}s"
                    ) from None
                continue
            reported += 1
            if not ok:
                raise RuntimeError(_failures(results, {rank: value}, world))
            if rank == 0:
                result = pickle.loads(value)
        finished = True
        return result
    finally:
        # After a failure the other ranks may wait in a collective for ever: end them.
        for process in processes:
            if not finished:
                process.terminate()
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        del store


# -- a greedy run over a tensor-parallel model ---------------------------------------------


@dataclass(frozen=True)
class ParallelModel:
    """How every rank builds the same model: a checkpoint folder, or a config with a seed for
    its random weights (tests and benchmarks)."""

    path: str | Path | None = None
    config: ChatGLM2Config | dict[str, Any] | str | None = None
    seed: int = 0
    dtype: torch.dtype | None = None
    quantize: str | None = None

    def build(self, device: torch.device) -> ChatGLM2:
        if self.path is not None:
            return ChatGLM2.from_pretrained(self.path, device, self.dtype, self.quantize)
        if self.config is None:
            raise ValueError("ParallelModel needs a path or a config")
        torch.manual_seed(self.seed)
        return ChatGLM2.from_config(self.config, device, self.dtype, self.quantize)


def greedy_logits(
    rank: int, world: int, spec: ParallelModel, prompt: Sequence[int], steps: int
) -> tuple[list[Tensor], list[int]]:
    """A rank's part of a greedy generation through the KV cache: the fp32 logits [V] of the
    prompt's last token and of `steps` decode steps, and the tokens chosen (rank 0's are
    returned by `launch(greedy_logits, world, spec, prompt, steps)`)."""
    device = torch.device(f"cuda:{rank}" if dist.get_backend() == "nccl" else "cpu")
    model = spec.build(device)
    shard(model, rank, world)
    model.setup_caches(1, len(prompt) + steps + 1)
    ids = torch.tensor([list(prompt)], device=device)  # [1, S]
    logits: list[Tensor] = []
    tokens: list[int] = []
    with torch.no_grad():
        last = model(ids, torch.arange(ids.shape[1], device=device), last_logits_only=True)
        for step in range(steps + 1):
            logits.append(last[0, -1].float().cpu())
            if step == steps:
                break
            token = int(last[0, -1].argmax())
            tokens.append(token)
            position = torch.tensor([len(prompt) + step], device=device)
            last = model(torch.tensor([[token]], device=device), position)
    return logits, tokens
