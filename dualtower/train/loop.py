"""The train loop: one function, top to bottom. Decisions are made once before the loop: how the run spreads
over processes (`parallel.Parallelism`), where it starts and how it saves (`checkpointer.Checkpointer`), its loss
(`objective.ContrastiveLoss`); bookkeeping lives in `runlog.RunLog`, seeds in `model.seeds`."""

from __future__ import annotations

import contextlib
import logging
import sys

import torch

from .. import distributed
from ..archs import get_config
from ..config import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE
from ..configtree import apply_overrides, build
from ..convert import load
from ..data import open_source
from ..data.loader import ShuffledPlan, batches
from ..data.packing import TokenBudgetPlan, record_lengths
from ..errors import UserError
from ..images import ImageTransform, NaFlexTrainTransform, TrainTransform, eval_transform
from ..model import DualEncoder, seeds
from ..rundir import RunDir
from ..tokenizers import get_tokenizer
from .checkpointer import Checkpointer
from .config import TrainConfig
from .errors import TrainingError
from .gradcache import encode, grad_cache_step
from .objective import ContrastiveLoss
from .optim import lr_at, param_groups
from .parallel import Parallelism
from .runlog import RunLog
from .state import find_checkpoint, saved_config
from .stop import Stopped, StopRequest
from .validate import Validation

__all__ = ["TrainingError", "build_model", "resume_config", "train"]

log = logging.getLogger("dualtower.train")


def train(cfg: TrainConfig, resume: str | None = None) -> dict:
    """Run `cfg` (or resume the run at `resume`) to its last step; the run's summary. Several processes: the group
    is torn down once the run's tensors, collectives' handles and modules are gone (`_run` has returned), so no
    collective's work outlives it into the interpreter's exit (gloo can abort there)."""
    d = distributed.init(cfg.train.dist_timeout_s)
    try:
        summary = _run(cfg, resume, d)
    except Stopped:  # every process saved the step and stops: leave the group together
        distributed.shutdown(d)
        raise
    distributed.shutdown(d)
    return summary


def _run(cfg: TrainConfig, resume: str | None, d: distributed.Dist) -> dict:
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    parallel = Parallelism.decide(cfg.train, d)
    cfg, model, checkpoints = Checkpointer.begin(cfg, resume, build_model, parallel.sharded)
    t, start = cfg.train, checkpoints.start
    if cfg.optim.warmup_steps > t.steps and d.main and not resume:
        log.warning("train.steps %d is smaller than optim.warmup_steps %d: the learning rate never reaches "
                    "optim.lr %g", t.steps, cfg.optim.warmup_steps, cfg.optim.lr)

    # Model, sharding and optimizer; then the resumed state (or the seeds of a fresh run).
    model.to(d.device)
    if d.enabled and not resume:
        distributed.broadcast_params(model)
    params = _prepare(model, cfg)
    checkpoints.before_sharding(model, parallel.shards)
    parallel.shard(model, params, t.precision)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    ema = checkpoints.ema(model)
    runlog = RunLog(checkpoints.run, t, d, start)
    checkpoints.restore(model, optimizer, runlog, d.rank)

    # Data: which records a step reads depends only on (seed, step, rank), so resuming is starting at `start`.
    stream = _batches(cfg, model, d, start)
    tokenizer = get_tokenizer(model)  # a model's own tokenizer files (SigLIP's) come with it
    validation = Validation(cfg.val, cfg.data, cfg.data.workers) if cfg.val.data else None
    loss_fn = ContrastiveLoss(model, t.loss, t.label_smoothing, t.loss_chunk)
    autocast = (torch.autocast(d.device.type, dtype=torch.bfloat16) if t.precision == "bf16"
                else contextlib.nullcontext())

    model.train()
    stop = StopRequest(announce=d.main).install()  # Ctrl-C / SIGTERM: finish the step, save, stop
    try:
        for step in range(start, t.steps):
            batch = next(stream)
            runlog.batch(batch)
            lr = lr_at(step, cfg.optim.lr, cfg.optim.warmup_steps, t.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            pixels, ids = batch.pixels.to(d.device), tokenizer(batch.captions)  # the text tower moves the ids
            keys = seeds.noise_keys(t.seed, step, batch.indices)  # dropout and patch dropout, keyed per sample

            # Forward and backward, then average gradients over processes once and clip.
            optimizer.zero_grad(set_to_none=True)
            if t.micro_batch:
                loss = grad_cache_step(model, pixels, ids, keys, t.micro_batch, loss_fn, d.enabled, autocast)
            else:
                image, text = encode(model, pixels, ids, keys, autocast)
                # Several processes: gather every process's embeddings with gradient (local rows, global columns).
                everyone = distributed.gather_features(image, text) if d.enabled else (image, text, 0)
                loss = loss_fn(image, text, *everyone)
                loss.backward()
            grad_norm = parallel.reduce_and_clip(t.grad_clip)

            # A non-finite loss or gradient on any process skips the update everywhere.
            updated = parallel.all_finite(loss, grad_norm)
            if updated:
                optimizer.step()
                if ema is not None:
                    ema.update()
            else:
                optimizer.zero_grad(set_to_none=True)
                runlog.update_skipped(step, loss, grad_norm)
            runlog.step(step, batch, loss, lr, grad_norm, updated, model.scale)

            done = step + 1
            # Validation (every process runs it: FSDP needs them all, and none waits long at the next barrier),
            # then a checkpoint there, which `best` names when its metric is the best so far.
            evaluate = validation is not None and ((cfg.val.every and done % cfg.val.every == 0) or done == t.steps)
            best = runlog.validation(step, validation(model), validation.metric) if evaluate else False
            stopping = stop.agreed(d)  # Ctrl-C / SIGTERM on any process: all save this step, then stop
            if (t.save_every and done % t.save_every == 0) or done == t.steps or evaluate or stopping:
                checkpoints.save(done, model, optimizer, runlog, ema, best, d)
            if stopping and done < t.steps:
                _stop(checkpoints.run, runlog, d.main, stopping, done, t.steps)
    finally:
        stop.uninstall()
    return runlog.close()


def _batches(cfg: TrainConfig, model: DualEncoder, d, start: int):
    """The batches of steps start..train.steps-1: shuffled plans of data.batch_size, or for NaFlex with a token
    budget as many images as fit it, by length bucket."""
    source = open_source(cfg.data.train, cfg.data.image_key, cfg.data.caption_key)
    transform = train_transform(model.cfg.preprocess, cfg.data)
    t = cfg.train
    if cfg.data.max_tokens_per_batch:
        lengths = record_lengths(source, transform, max(1, cfg.data.workers) * 2)
        plan = TokenBudgetPlan(lengths, cfg.data.max_tokens_per_batch, cfg.data.length_buckets,
                               transform.max_patches, t.seed, d.rank, d.world)
    else:
        plan = ShuffledPlan(len(source), cfg.data.batch_size, t.seed, d.rank, d.world)
    return batches(source, plan, transform, start, t.steps, cfg.data.workers)


def _stop(run: RunDir, runlog: RunLog, main: bool, signum, done: int, steps: int) -> None:
    """After the checkpoint of step `done`: say how to resume, and stop the run (`Stopped`)."""
    runlog.close()
    if main:
        print(f"dualtower train: stopped after step {done} of {steps}; checkpoint {run.step(done)}\n"
              f"resume with: dualtower train --resume {run.root}", file=sys.stderr, flush=True)
    raise Stopped(signum, done, run.step(done))


def train_transform(pre, data) -> ImageTransform:
    """Random resized crops (crop_scale < 1) or the eval transform; NaFlex models keep each image's aspect."""
    naflex = pre.resize_mode == "naflex"
    if not naflex and (data.max_patches or data.max_tokens_per_batch or not data.upscale):
        raise UserError("data.max_patches, data.max_tokens_per_batch and data.upscale are for NaFlex models "
                         f"(SigLIP 2); this model takes {pre.image_size}x{pre.image_size} images")
    if not naflex:
        return TrainTransform(pre, scale=(data.crop_scale, 1.0)) if data.crop_scale < 1 else ImageTransform(pre)
    max_patches = data.max_patches or None
    if data.crop_scale < 1:
        return NaFlexTrainTransform(pre, max_patches, scale=(data.crop_scale, 1.0), upscale=data.upscale)
    return eval_transform(pre, max_patches, data.upscale)


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
    if getattr(model.cfg.vision, "folded", False):
        raise TrainingError(f"{model.cfg.name}'s vision tower is reparameterized (its branches folded into single "
                            "convolutions, for inference); train the unfolded form, the model as it was before "
                            "reparameterize() or export")
    model.visual.set_patch_dropout(cfg.model.patch_dropout)
    model.set_dropout(cfg.model.dropout)
    model.set_drop_path(cfg.model.drop_path)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    for tower, locked in ((model.visual, cfg.model.lock_image), (model.text, cfg.model.lock_text)):
        tower.requires_grad_(not locked)
    return [p for p in model.parameters() if p.requires_grad]


RESUMABLE_CHANGES = ("train.parallel", "train.shard_size", "train.save_every", "train.log_every", "train.progress",
                     "train.tensorboard",
                     "train.keep_checkpoints", "train.dist_timeout_s", "data.workers")


def resume_config(run_dir: str, overrides: list[str]) -> TrainConfig:
    """The config a run was started with (saved in its latest checkpoint), with `overrides` that do not change
    what the run computes."""
    saved = saved_config(find_checkpoint(run_dir))
    for item in overrides:
        key = item.lstrip("-").partition("=")[0]
        if key == "train.steps":  # refused, never re-planned silently: the schedule decays to the planned end
            steps = saved.get("train", {}).get("steps")
            raise UserError(f"train.steps cannot change on resume: the run's learning rate warms up and decays "
                             f"to zero at step {steps}, and a new end would move it back up. To train on, start "
                             f"a new run from this one's weights: --model.init={run_dir} with its own schedule")
        if key not in RESUMABLE_CHANGES:
            raise UserError(f"{key} cannot change on resume; what can: {', '.join(RESUMABLE_CHANGES)}")
    return build(TrainConfig, apply_overrides(saved, overrides))
