"""Process-group helpers: set-up from torchrun's environment, gathering with gradient, gradient averaging, and
sharding a model with FSDP2 (`fully_shard` on a DeviceMesh)."""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # init() created the process group, so shutdown() tears it down

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(timeout_s: float = 120.0) -> Dist:
    """One process, or the group torchrun describes (gloo on CPU, nccl on CUDA). A collective that waits
    longer than `timeout_s` (a peer died) raises instead of hanging."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world == 1:
        return Dist(device=device)
    if cuda:
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device,
                owns_group=owns)


def shutdown(d: Dist) -> None:
    """Tear down a group that init() created, after every rank has arrived: a rank that destroys gloo while a
    peer is still finishing its last collective can abort at exit (SIGABRT, seen on CPU). Objects left in
    reference cycles that hold a collective's handle are collected first, while the group still exists."""
    if d.owns_group and dist.is_initialized():
        import gc

        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def gather_features(image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(all images, all texts, offset of this process's rows). Gradients flow back to every process's rows.

    Processes may hold different numbers of rows (skipped samples); rows are padded to the largest count for
    the collective and the padding removed after.
    """
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([image.shape[0]], device=image.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    most = max(sizes)

    def gather(x: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])]) if x.shape[0] < most else x
        with warnings.catch_warnings():
            # torch 2.14 deprecates this autograd all_gather for _functional_collectives.all_gather_single, whose
            # backward on gloo is another collective (reduce-scatter) with another summation order: the runs'
            # bit-exact resume and FSDP = DDP are proven on this one, so it stays until that is re-proven, and
            # every rank does not print the notice every run.
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
            parts = all_gather(padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    return gather(image), gather(text), sum(sizes[: dist.get_rank()])


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Mean of each gradient over processes, in one flat buffer (one collective per step)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def shard(model: torch.nn.Module, d: Dist, precision: str = "fp32", shard_size: int = 0) -> list[torch.nn.Parameter]:
    """FSDP2 over all processes, or with `shard_size` HSDP: sharded within groups of that many processes (a node),
    replicated across the groups. Each transformer block of each tower is its own unit, then each tower (its
    embeddings, pool, norms and head), so that `encode_image` / `encode_text` gather what they need however they
    are called. The 0-d logit scale and bias (fully_shard takes no 0-d parameter) stay whole on every process:
    they are returned, and their gradients are the caller's to average. bf16: parameters gathered in bf16,
    gradients reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if shard_size and (shard_size > d.world or d.world % shard_size):
        raise UserError(f"train.shard_size {shard_size} does not divide the {d.world} processes")
    mesh = init_device_mesh(d.device.type, (d.world // shard_size, shard_size), mesh_dim_names=("replicate", "shard")) \
        if shard_size else init_device_mesh(d.device.type, (d.world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
        else MixedPrecisionPolicy()
    for tower in (model.visual, model.text):
        if tower is None:
            continue
        for block in tower.blocks():
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(tower, mesh=mesh, mp_policy=policy)
    return [p for p in (model.logit_scale, model.logit_bias) if p is not None]


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ for parameters some of which are sharded (DTensors) and some whole: the global
    norm over all of them, every gradient scaled by min(1, max_norm / norm)."""
    from torch.distributed.tensor import DTensor

    norms = []
    for p in params:
        if p.grad is not None:
            n = torch.linalg.vector_norm(p.grad, 2.0)
            norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0) if norms else torch.zeros(())
    scale = float((max_norm / (total + 1e-6)).clamp(max=1.0))
    if scale < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return total


def local_bytes(model: torch.nn.Module, optimizer=None) -> int:
    """Bytes of parameters (and optimizer state) held by this process: a sharded tensor counts its own shard."""
    from torch.distributed.tensor import DTensor

    def size(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    total = sum(size(p) for p in model.parameters())
    if optimizer is not None:
        total += sum(size(v) for s in optimizer.state.values() for k, v in s.items()
                     if isinstance(v, torch.Tensor) and k != "step")  # AdamW's step counters are bookkeeping
    return total


def broadcast_params(module: torch.nn.Module) -> None:
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)
