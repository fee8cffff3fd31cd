"""Per-GPU training memory of an architecture, before renting the GPUs: weights, gradients, AdamW state and
activations, for DDP (every GPU holds everything) or FSDP (weights, gradients and optimizer state sharded over
the GPUs, plus the blocks gathered at a time).

Parameter counts are exact (the model is built on the meta device). Activations are the tensors a pre-norm
block saves for its backward pass with a memory-efficient attention kernel (no L x L matrix): per token the
block input, both norm outputs, q/k/v, the attention output and the residual sum (8 x width) and the MLP's
hidden layer before and after its activation (2 x mlp width), plus the tower's embeddings. Gradient
checkpointing keeps each block's input and recomputes one block at a time. tests/test_plan.py checks the
parts against what a small model really holds (parameters and optimizer state byte for byte, activations by
counting the tensors autograd saves). Not counted: the allocator's fragmentation, the CUDA context (~0.5 GB),
communication buffers and the loss's B x B logits (small with train.loss_chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

from .archs import config_of
from .config import ConvVisionConfig, ModelConfig
from .errors import UserError

GB = 1024 ** 3


@dataclass(frozen=True)
class Plan:
    arch: str
    gpus: int
    batch: int  # global
    parallel: str
    precision: str
    grad_checkpointing: bool
    params: int
    token_table: int  # of them, the text tower's token embedding (MetaCLIP 2's XLM-V table: half of H/14's)
    weights: float  # bytes per GPU
    grads: float
    optimizer: float
    # FSDP: what a tower holds whole while it runs: its own parameters (embeddings, token table, head) and two
    # of its blocks at a time (with prefetch)
    gathered: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.gathered + self.activations

    def table(self) -> str:
        rows = [("weights", self.weights), ("gradients", self.grads), ("AdamW state", self.optimizer)]
        if self.parallel == "fsdp":
            rows.append(("gathered", self.gathered))
        rows += [("activations", self.activations), ("total", self.total)]
        table = f" ({self.token_table / 1e9:.2f}B of them the text token table)" if self.token_table else ""
        head = (f"{self.arch}: {self.params / 1e9:.2f}B parameters{table}, {self.parallel} on {self.gpus} GPU(s), "
                f"global batch {self.batch} ({self.batch / self.gpus:g} per GPU), {self.precision}"
                f"{', gradient checkpointing' if self.grad_checkpointing else ''}")
        return head + "\n" + "\n".join(f"  {name:<16}{value / GB:9.2f} GB" for name, value in rows)


def _tower_params(cfg: ModelConfig) -> tuple[int, int, dict[str, int]]:
    """All parameters, the text token table's, and per tower what FSDP gathers while it runs (its own
    parameters outside the blocks, and two of its largest blocks)."""
    import torch

    from .model import DualEncoder

    with torch.device("meta"):
        model = DualEncoder(cfg)
    total = sum(p.numel() for p in model.parameters())
    table = model.text.token_table().weight.numel() if model.text is not None else 0
    held = {}
    for name, tower in (("vision", model.visual), ("text", model.text)):
        if tower is not None:
            blocks = [sum(p.numel() for p in b.parameters()) for b in tower.blocks()]
            held[name] = sum(p.numel() for p in tower.parameters()) - sum(blocks) + 2 * max(blocks)
    return total, table, held


def activation_bytes_per_sample(cfg: ModelConfig, act_bytes: int, grad_checkpointing: bool) -> float:
    """Bytes saved for backward per sample, both towers."""
    total = 0.0
    for c, tokens in ((cfg.vision, _vision_tokens(cfg)), (cfg.text, cfg.text and cfg.text.context_length)):
        if c is None:
            continue
        if isinstance(c, ConvVisionConfig):
            total += _conv_activation_bytes(cfg, act_bytes, grad_checkpointing)
            continue
        block = tokens * (8 * c.width + 2 * c.mlp_dim) * act_bytes
        edges = 2 * tokens * c.width * act_bytes  # embeddings in, final norm out
        if grad_checkpointing:  # each block's input kept, one block's activations alive while it is recomputed
            total += c.depth * tokens * c.width * act_bytes + block + edges
        else:
            total += c.depth * block + edges
    return total


def _conv_activation_bytes(cfg: ModelConfig, act_bytes: int, grad_checkpointing: bool) -> float:
    """A convolutional tower's activations are not the transformer formula's: they are counted as autograd saves
    them, one sample through the tower built on the meta device (no memory, no compute), in training mode.
    With checkpointing: each stage's input, plus the largest stage's activations while it is recomputed."""
    import torch

    from .model import DualEncoder

    with torch.device("meta"):
        tower = DualEncoder(cfg.replace(text=None)).visual.train()
        pixels = torch.zeros(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    per_stage, current = {}, ["edges"]

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            per_stage[current[0]] = per_stage.get(current[0], 0) + t.numel() * act_bytes
        return t

    hooks = [stage.register_forward_pre_hook(lambda m, args, i=i: current.__setitem__(0, i))
             for i, stage in enumerate(tower.stages)]
    inputs = []
    hooks += [stage.register_forward_pre_hook(lambda m, args: inputs.append(args[0].numel() * act_bytes))
              for stage in tower.stages]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            tower(pixels)
    finally:
        for h in hooks:
            h.remove()
    stages = [v for k, v in per_stage.items() if k != "edges"]
    if grad_checkpointing:
        return per_stage.get("edges", 0) + sum(inputs) + max(stages)
    return float(sum(per_stage.values()))


def _vision_tokens(cfg: ModelConfig) -> int:
    v = cfg.vision
    if isinstance(v, ConvVisionConfig):
        return 0
    if v.naflex:
        return cfg.preprocess.max_patches
    return (1 if v.class_token else 0) + v.grid * v.grid


def plan(arch, gpus: int, batch: int, parallel: str = "fsdp", precision: str = "bf16",
         grad_checkpointing: bool = False) -> Plan:
    if gpus < 1 or batch < gpus or batch % gpus:
        raise UserError(f"global batch {batch} must be a positive multiple of the {gpus} GPU(s)")
    if parallel not in ("ddp", "fsdp") or precision not in ("fp32", "bf16"):
        raise UserError("parallel is ddp or fsdp; precision is fp32 or bf16")
    cfg = config_of(arch)
    params, table, held = _tower_params(cfg)
    shards = gpus if parallel == "fsdp" else 1
    act_bytes = 2 if precision == "bf16" else 4
    weights = 4 * params / shards  # fp32 master weights (bf16: autocast, or FSDP's bf16 gathered copies)
    grads = 4 * params / shards
    optimizer = 8 * params / shards  # AdamW: exp_avg and exp_avg_sq in fp32
    gathered = act_bytes * max(held.values()) if parallel == "fsdp" and gpus > 1 else 0.0
    activations = batch / gpus * activation_bytes_per_sample(cfg, act_bytes, grad_checkpointing)
    return Plan(cfg.name, gpus, batch, parallel, precision, grad_checkpointing, params, table, weights, grads,
                optimizer, gathered, activations)
