"""The train loop: one function, top to bottom. Helpers (schedule, checkpoints, gathering) live beside it."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import distributed
from ..archs import get_config
from ..checkpoint import load
from ..configtree import build, to_dict
from ..data import SkipStats, open_source
from ..data.loader import ShuffledPlan, batches
from ..images import ImageTransform, TrainTransform
from ..chunked_losses import chunked_clip_loss, chunked_siglip_loss
from ..losses import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE, clip_loss, siglip_loss
from ..model import DualEncoder
from ..tokenizer import get_tokenizer
from .config import TrainConfig
from .gradcache import encode, grad_cache_step
from .optim import lr_at, param_groups
from .state import find_checkpoint, load_training, save_training, set_rng_state

log = logging.getLogger("dualtower.train")


class TrainingError(RuntimeError):
    """The run cannot go on (for example, too many non-finite steps in a row); the message says why."""


def build_model(cfg: TrainConfig) -> DualEncoder:
    if cfg.model.init:
        model = load(cfg.model.init, arch=cfg.model.init_arch or None)
    else:
        model_cfg = get_config(cfg.model.arch)
        if cfg.train.loss == "siglip" and model_cfg.init_logit_bias is None:
            model_cfg = model_cfg.replace(init_logit_scale=SIGLIP_INIT_LOGIT_SCALE,
                                          init_logit_bias=SIGLIP_INIT_LOGIT_BIAS)
        from .. import create_model

        model = create_model(model_cfg, seed=cfg.train.seed)
    if model.text is None:
        raise TrainingError(f"{model.cfg.name} is a vision-only model; contrastive training needs a text tower")
    if cfg.train.loss == "siglip" and model.logit_bias is None:
        raise TrainingError(f"train.loss=siglip needs a model with a logit bias; {cfg.model.init} has none")
    return model


def _prepare(model: DualEncoder, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    model.visual.set_patch_dropout(cfg.model.patch_dropout)
    model.set_dropout(cfg.model.dropout)
    model.set_drop_path(cfg.model.drop_path)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    for tower, locked in ((model.visual, cfg.model.lock_image), (model.text, cfg.model.lock_text)):
        tower.requires_grad_(not locked)
    return [p for p in model.parameters() if p.requires_grad]


def _metrics_file(out: Path, name: str, keep_through_step: int):
    """Open OUT/name for appending, first dropping records after `keep_through_step` (left by a killed run)."""
    path = out / name
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= keep_through_step]
        path.write_text("".join(ln + "\n" for ln in kept))
    return open(path, "a", encoding="utf-8")


RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.log_every", "train.progress",
                     "train.keep_checkpoints", "train.dist_timeout_s", "data.workers")


def resume_config(run_dir: str, overrides: list[str]) -> TrainConfig:
    """The config a run was started with (saved in its latest checkpoint), with `overrides` that do not change
    what the run computes."""
    from ..configtree import apply_overrides

    saved = json.loads((find_checkpoint(Path(run_dir)) / "train_config.json").read_text())
    for item in overrides:
        key = item.lstrip("-").partition("=")[0]
        if key not in RESUMABLE_CHANGES:
            raise ValueError(f"{key} cannot change on resume; what can: {', '.join(RESUMABLE_CHANGES)}")
    return build(TrainConfig, apply_overrides(saved, overrides))


def train(cfg: TrainConfig, resume: str | None = None) -> dict:
    d = distributed.init(cfg.train.dist_timeout_s)
    t = cfg.train
    out = Path(t.out)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)

    # Model and optimizer, fresh or from the checkpoint being resumed.
    start, state = 0, None
    if resume:
        directory = find_checkpoint(Path(resume))
        model, state = load_training(directory)
        start = int(state["step"])
        out = directory.parent.parent
        cfg = replace(cfg, train=replace(t, out=str(out)))
        t = cfg.train
    else:
        model = build_model(cfg)
    model.to(d.device)
    if d.enabled and not resume:
        distributed.broadcast_params(model)
    params = _prepare(model, cfg)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    stats = SkipStats()
    nonfinite_total, nonfinite_run = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        stats.restore(state["data"])
        nonfinite_total = int(state["nonfinite"])
        set_rng_state(state["rng"])
    else:
        torch.manual_seed(t.seed * 7919 + d.rank)  # randomness not keyed per sample, distinct per process

    # Data: which records a step reads depends only on (seed, step, rank), so resuming is starting at `start`.
    source = open_source(cfg.data.train, cfg.data.image_key, cfg.data.caption_key)
    plan = ShuffledPlan(len(source), cfg.data.batch_size, t.seed, d.rank, d.world)
    transform = (TrainTransform(model.cfg.preprocess, scale=(cfg.data.crop_scale, 1.0)) if cfg.data.crop_scale < 1
                 else ImageTransform(model.cfg.preprocess))
    tokenizer = get_tokenizer(model.cfg)
    stream = batches(source, plan, transform, tokenizer, start, t.steps, cfg.data.workers)

    out.mkdir(parents=True, exist_ok=True)
    metrics = _metrics_file(out, "metrics.jsonl", start) if d.main else None
    sample_log = _metrics_file(out, f"samples.rank{d.rank}.jsonl", start) if t.log_samples else None
    autocast = (torch.autocast(d.device.type, dtype=torch.bfloat16) if t.precision == "bf16"
                else contextlib.nullcontext())
    progress = None
    if d.main and t.progress:
        from tqdm import tqdm

        progress = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    window_start, window_samples = time.perf_counter(), 0
    run_start = time.perf_counter()

    def loss_fn(image, text, all_image, all_text, offset):
        if t.loss == "clip":
            if t.loss_chunk:
                return chunked_clip_loss(image, text, model.scale(), all_image, all_text, offset, t.label_smoothing,
                                         t.loss_chunk)
            return clip_loss(image, text, model.scale(), all_image, all_text, offset, t.label_smoothing)
        if t.loss_chunk:
            return chunked_siglip_loss(image, text, model.scale(), model.logit_bias, all_text, offset, t.loss_chunk)
        return siglip_loss(image, text, model.scale(), model.logit_bias, all_text, offset)

    model.train()
    for step in range(start, t.steps):
        batch = next(stream)
        stats.add(len(batch), batch.skips)
        lr = lr_at(step, cfg.optim.lr, cfg.optim.warmup_steps, t.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels, ids = batch.pixels.to(d.device), batch.ids  # the text tower checks and moves the ids itself

        # Forward and backward. Noise (dropout, patch dropout) is keyed per sample by (seed, step, record).
        keys = (t.seed & 0x7FF) << 52 | step << 32 | torch.tensor(batch.indices, dtype=torch.int64)
        optimizer.zero_grad(set_to_none=True)
        if t.micro_batch:
            loss = grad_cache_step(model, pixels, ids, keys, t.micro_batch, loss_fn, d.enabled, autocast)
        else:
            image, text = encode(model, pixels, ids, keys, autocast)
            # Several processes: gather every process's embeddings with gradient (local rows, global columns).
            all_image, all_text, offset = (distributed.gather_features(image, text) if d.enabled
                                           else (image, text, 0))
            loss = loss_fn(image, text, all_image, all_text, offset)
            loss.backward()

        # Average gradients over processes once, clip; a non-finite loss or gradient skips the update.
        if d.enabled:
            distributed.average_gradients(params, d.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else float("inf"))
        finite = torch.tensor([float(torch.isfinite(loss) and torch.isfinite(grad_norm))], device=d.device)
        if d.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() == 1.0:
            optimizer.step()
            nonfinite_run = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            nonfinite_total, nonfinite_run = nonfinite_total + 1, nonfinite_run + 1
            log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); update skipped",
                        step, float(loss.detach()), float(grad_norm))
            if nonfinite_run >= t.max_nonfinite:
                raise TrainingError(f"{nonfinite_run} non-finite steps in a row (last at step {step}); "
                                    "stopping. Lower optim.lr, raise optim.warmup_steps or use train.precision=fp32.")

        # Logging and checkpoints.
        loss_value = loss.detach()
        if d.enabled:
            torch.distributed.all_reduce(loss_value)
            loss_value /= d.world
        window_samples += len(batch) * d.world
        if sample_log is not None:
            sample_log.write(json.dumps({"step": step, "ids": batch.sample_ids}) + "\n")
        done = step + 1
        if metrics is not None and (done % t.log_every == 0 or done == t.steps):
            now = time.perf_counter()
            record = {"step": step, "loss": loss_value.item(), "lr": lr, "logit_scale": model.scale().item(),
                      "grad_norm": float(grad_norm), "samples_per_s": window_samples / (now - window_start),
                      "skipped": sum(stats.skipped.values()), "nonfinite": nonfinite_total}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if progress is not None:
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                     samples_s=f"{record['samples_per_s']:.0f}")
            window_start, window_samples = now, 0
        if progress is not None:
            progress.update(1)
        if (t.save_every and done % t.save_every == 0) or done == t.steps:
            if sample_log is not None:
                sample_log.flush()
            if d.main:
                save_training(out, done, model, optimizer, {"data": stats.state(), "nonfinite": nonfinite_total},
                              to_dict(cfg), t.keep_checkpoints)
            if d.enabled:
                torch.distributed.barrier()

    if progress is not None:
        progress.close()
    for f in (metrics, sample_log):
        if f is not None:
            f.close()
    summary = {"steps": t.steps, "resumed_from": start, "seconds": time.perf_counter() - run_start,
               "data": _global_stats(stats, d), "nonfinite_steps": nonfinite_total,
               "checkpoint": str(out / "checkpoints" / f"step_{t.steps:06d}")}
    if d.main:
        _finish(out, summary)
    distributed.shutdown(d)
    return summary


def _global_stats(stats: SkipStats, d) -> dict:
    state = stats.state()
    if not d.enabled:
        return {**state, "seen": stats.seen}
    gathered = [None] * d.world
    torch.distributed.all_gather_object(gathered, state)
    skipped: dict[str, int] = {}
    for s in gathered:
        for reason, n in s["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    accepted = sum(s["accepted"] for s in gathered)
    return {"accepted": accepted, "skipped": skipped, "seen": accepted + sum(skipped.values())}


def _finish(out: Path, summary: dict) -> None:
    from ..plots import line_chart

    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    if records:
        line_chart([r["step"] for r in records], [r["loss"] for r in records], out / "loss.png",
                   title="training loss", xlabel="step", ylabel="loss")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    data = summary["data"]
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(data["skipped"].items())) or "none"
    print(f"trained {summary['steps']} steps in {summary['seconds']:.1f}s"
          + (f" (resumed at step {summary['resumed_from']})" if summary["resumed_from"] else "")
          + f"; final loss {records[-1]['loss']:.4f}" * bool(records))
    print(f"samples seen {data['seen']} = accepted {data['accepted']} + skipped "
          f"{sum(data['skipped'].values())} ({skipped}); non-finite steps skipped: {summary['nonfinite_steps']}")
    print(f"checkpoint: {summary['checkpoint']}  metrics: {out / 'metrics.jsonl'}  loss curve: {out / 'loss.png'}")
