"""How a run spreads over processes, decided once: one process, DDP (every process the whole model, gradients
averaged once a step) or FSDP2 / HSDP (the towers sharded; the logit scale and bias stay whole on every process,
their gradients averaged as DDP's are). The train loop asks it to shard, to reduce and to clip."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .. import distributed


@dataclass
class Parallelism:
    d: distributed.Dist
    sharded: bool  # train.parallel fsdp or hsdp
    group: int  # HSDP: processes per sharding group (a node); 0: shard over all
    params: list[torch.nn.Parameter] = field(default_factory=list)  # what the optimizer steps and clipping sees
    replicated: list[torch.nn.Parameter] = field(default_factory=list)  # sharded runs: the parameters kept whole

    @classmethod
    def decide(cls, t, d: distributed.Dist) -> "Parallelism":
        sharded = t.parallel in ("fsdp", "hsdp")
        group = (t.shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", d.world))) if t.parallel == "hsdp" else 0
        return cls(d, sharded, group)

    @property
    def shards(self) -> bool:
        """Whether the model is sharded in this run (sharding asked for, over several processes)."""
        return self.sharded and self.d.enabled

    def shard(self, model: torch.nn.Module, params: list[torch.nn.Parameter], precision: str) -> None:
        """After the training options are set, before the optimizer sees the parameters."""
        self.params = params
        if self.shards:
            self.replicated = distributed.shard(model, self.d, precision, self.group)
            self.params = [p for p in model.parameters() if p.requires_grad]

    def reduce_and_clip(self, max_norm: float) -> torch.Tensor:
        """Average the gradients over processes once (FSDP reduced the sharded ones in the backward pass) and
        clip them to `max_norm` (0: no clipping); the norm before clipping."""
        if self.d.enabled:
            reduced = [p for p in self.replicated if p.requires_grad] if self.replicated else self.params
            distributed.average_gradients(reduced, self.d.world)
        clip = max_norm if max_norm > 0 else float("inf")
        if self.replicated:
            return distributed.clip_grad_norm(self.params, clip)
        return torch.nn.utils.clip_grad_norm_(self.params, clip)

    def all_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether the loss and the gradient norm are finite on every process (else every process skips)."""
        finite = torch.tensor([float(torch.isfinite(loss) and torch.isfinite(grad_norm))], device=self.d.device)
        if self.d.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return finite.item() == 1.0
