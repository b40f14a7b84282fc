"""Sharding the policy over N processes with FSDP2, applied to a plain model from outside.

``PolicyTrainer`` takes an optional device mesh. With one, every rank holds a shard of each decoder
layer's parameters, gradients and optimizer state (``torch.distributed.fsdp.fully_shard`` per layer,
then the root), receives the whole batch, and works on its share of the rows: the rows are split
across ranks balanced by length, then packed into micro-batches within each rank. FSDP's
collectives run once per forward and backward of every rank, so a rank with fewer micro-batches
runs empty ones (``None`` in its list) to keep in step. Each micro-batch's loss divides by the
whole minibatch's tokens or completions, which every rank computes from the batch it holds, and
FSDP sums the ranks' gradients (divide factor 1), so the update equals one process's.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from rlwhf.train.batch import micro_batches


def free_address() -> tuple[str, int]:
    """This host's address and a free port, for the group's rendezvous (rank 0 calls it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    try:
        host = socket.gethostbyname(socket.gethostname())
    except OSError:
        host = "127.0.0.1"
    return host, port


def init_group(rank: int, world: int, address: str, port: int, device: torch.device):
    """Join the policy's process group (gloo for CPU tensors, NCCL for CUDA ones) and return its mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    return init_device_mesh(device.type, (world,))


def shard(model, mesh) -> bool:
    """FSDP2 on each decoder layer, then on the decoder (embeddings, final norm) and the LM head as
    units of their own, so that the trainer can run the decoder and the head separately (chunked
    log-probs). A model whose head shares the embeddings' weights gets one root unit instead, and
    must be run whole: the return value says whether the decoder and head may run separately. The
    ranks' gradients are summed, not averaged: each rank's loss is already its share."""
    from torch.distributed.fsdp import fully_shard

    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers at model.model.layers to shard")
    units = [fully_shard(layer, mesh=mesh) for layer in layers]
    separate = not getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "lm_head")
    units += (
        [fully_shard(decoder, mesh=mesh), fully_shard(model.lm_head, mesh=mesh)]
        if separate
        else [fully_shard(model, mesh=mesh)]
    )
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return separate


def rank_rows(lengths: list[int], world: int) -> list[list[int]]:
    """The rows of a batch split across ``world`` ranks: longest first, each to the rank with the
    fewest tokens so far; in order, all to rank 0, when there is one rank."""
    if world == 1:
        return [list(range(len(lengths)))]
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = load.index(min(load))
        shares[r].append(i)
        load[r] += lengths[i]
    return [sorted(s) for s in shares]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` without a group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_micro_batches(lengths: list[int], budget: int, world: int, rank: int) -> list[tuple[list[int] | None, int]]:
    """This rank's passes over a batch: each a micro-batch (row indices) or ``None`` (an empty pass,
    so that every rank runs as many as the busiest), with the most padded tokens any rank has in
    that pass (what sizes the pass's logit chunks alike on every rank). Every rank computes the same
    plan from the same batch; one rank's micro-batches are exactly ``micro_batches(lengths, budget)``."""

    plans = [
        [[rows[j] for j in mb] for mb in micro_batches([lengths[i] for i in rows], budget)]
        for rows in rank_rows(lengths, world)
    ]
    count = max(len(p) for p in plans)

    def padded(mb):
        return len(mb) * max(lengths[i] for i in mb) if mb else 0

    widest = [max(padded(p[s]) if s < len(p) else 0 for p in plans) for s in range(count)]
    mine = plans[rank] + [None] * (count - len(plans[rank]))
    return list(zip(mine, widest))
