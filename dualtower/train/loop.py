"""The train loop: one function, top to bottom. Decisions (loss, precision, transform) are made once before the
loop; bookkeeping lives in `runlog.RunLog`, checkpoints in `state`, seeds in `model.seeds`."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from .. import distributed
from ..archs import get_config
from ..chunked_losses import chunked_clip_loss, chunked_siglip_loss
from ..config import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE
from ..configtree import apply_overrides, build, to_dict
from ..convert import load
from ..data import open_source
from ..data.loader import ShuffledPlan, batches
from ..data.packing import TokenBudgetPlan, record_lengths
from ..images import ImageTransform, NaFlexTrainTransform, TrainTransform, eval_transform
from ..losses import clip_loss, siglip_loss
from ..model import DualEncoder, seeds
from ..rundir import RunDir
from ..tokenizers import get_tokenizer
from .config import TrainConfig
from .gradcache import encode, grad_cache_step
from .optim import lr_at, param_groups
from .errors import TrainingError
from .runlog import RunLog
from .stop import Stopped, StopRequest
from .validate import Validation
from .state import (find_checkpoint, is_sharded, load_by_name, load_sharded, load_training, optimizer_state_by_name,
                    save_sharded, save_training, saved_config, set_rng_state)

__all__ = ["TrainingError", "build_model", "resume_config", "train"]

log = logging.getLogger("dualtower.train")


def train(cfg: TrainConfig, resume: str | None = None) -> dict:
    d = distributed.init(cfg.train.dist_timeout_s)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)

    # Model and optimizer, fresh or from the checkpoint being resumed (which also names the run directory).
    start, state = 0, None
    if resume:
        directory = find_checkpoint(resume)
        model, state = load_training(directory)
        start, run = int(state["step"]), RunDir.of_checkpoint(directory)
        cfg = replace(cfg, train=replace(cfg.train, out=str(run.root)))
    else:
        # Paths as absolute ones, so the saved config resumes from any working directory.
        cfg = replace(cfg, data=replace(cfg.data, train=_absolute(cfg.data.train)),
                      model=replace(cfg.model, init=_absolute(cfg.model.init)),
                      train=replace(cfg.train, out=os.path.abspath(cfg.train.out)),
                      val=replace(cfg.val, data=_absolute(cfg.val.data),
                                  templates=os.path.abspath(cfg.val.templates) if cfg.val.templates else ""))
        out = Path(cfg.train.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"train.out {cfg.train.out}: exists and is a file, not a run directory")
        model, run = build_model(cfg), RunDir(out)
    t = cfg.train
    if cfg.optim.warmup_steps > t.steps and d.main and not resume:
        log.warning("train.steps %d is smaller than optim.warmup_steps %d: the learning rate never reaches "
                    "optim.lr %g", t.steps, cfg.optim.warmup_steps, cfg.optim.lr)
    model.to(d.device)
    if d.enabled and not resume:
        distributed.broadcast_params(model)
    params = _prepare(model, cfg)
    # FSDP: shard the towers (after the training options are set, before the optimizer sees the parameters);
    # the logit scale and bias stay whole on every process, their gradients averaged here as DDP's are.
    sharded = t.parallel in ("fsdp", "hsdp")
    group = (t.shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", d.world))) if t.parallel == "hsdp" else 0
    # A DDP checkpoint resumed sharded: its optimizer state, keyed by parameter position, is re-keyed by name
    # on the whole model first (DCP's sharded checkpoints are keyed by name already).
    by_name = optimizer_state_by_name(model, param_groups(model, cfg.optim.weight_decay), state["optimizer"]) \
        if state is not None and not is_sharded(directory) and sharded and d.enabled else None
    replicated = distributed.shard(model, d, t.precision, group) if sharded and d.enabled else []
    params = [p for p in model.parameters() if p.requires_grad] if replicated else params
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    ema = None  # the weights' moving average (train.ema_decay), every tensor of the model's state
    if t.ema_decay:
        if sharded:
            raise TrainingError("train.ema_decay with train.parallel=fsdp is not supported yet")
        saved = state.get("ema") if state is not None else None
        ema = {k: (saved[k].to(v.device) if saved is not None else v.detach().clone())
               for k, v in model.state_dict().items() if v.is_floating_point()}
        averaged = [model.state_dict()[k] for k in ema]  # views of the parameters, updated in place
    runlog = RunLog(run, t, d, start)
    if state is not None:
        if is_sharded(directory):  # any number of processes, sharded or not, reads it
            load_sharded(directory, model, optimizer)
        elif by_name is not None:
            load_by_name(model, optimizer, by_name)
        else:
            optimizer.load_state_dict(state["optimizer"])
        runlog.restore(state)
        set_rng_state(state["rng"])
    else:
        torch.manual_seed(seeds.process_seed(t.seed, d.rank))

    # Data: which records a step reads depends only on (seed, step, rank), so resuming is starting at `start`.
    source = open_source(cfg.data.train, cfg.data.image_key, cfg.data.caption_key)
    transform = train_transform(model.cfg.preprocess, cfg.data)
    if cfg.data.max_tokens_per_batch:  # NaFlex: as many images as fit the token budget, by length bucket
        lengths = record_lengths(source, transform, max(1, cfg.data.workers) * 2)
        plan = TokenBudgetPlan(lengths, cfg.data.max_tokens_per_batch, cfg.data.length_buckets,
                               transform.max_patches, t.seed, d.rank, d.world)
    else:
        plan = ShuffledPlan(len(source), cfg.data.batch_size, t.seed, d.rank, d.world)
    stream = batches(source, plan, transform, start, t.steps, cfg.data.workers)
    tokenizer = get_tokenizer(model)  # a model's own tokenizer files (SigLIP's) come with it
    validation = Validation(cfg.val, cfg.data, cfg.data.workers) if cfg.val.data else None
    loss_fn = choose_loss(model, t)
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
                loss = loss_fn(image, text, *(distributed.gather_features(image, text) if d.enabled else
                                              (image, text, 0)))
                loss.backward()
            if d.enabled:  # FSDP reduced the sharded gradients in the backward pass
                distributed.average_gradients([p for p in replicated if p.requires_grad] if replicated else params,
                                              d.world)
            clip = t.grad_clip if t.grad_clip > 0 else float("inf")
            grad_norm = distributed.clip_grad_norm(params, clip) if replicated else \
                torch.nn.utils.clip_grad_norm_(params, clip)

            # A non-finite loss or gradient on any process skips the update everywhere.
            updated = _all_finite(loss, grad_norm, d)
            if updated:
                optimizer.step()
                if ema is not None:  # ema = decay * ema + (1 - decay) * weights
                    torch._foreach_lerp_(list(ema.values()), averaged, 1.0 - t.ema_decay)
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
                runlog.flush()
                if sharded:  # every process writes its shards
                    save_sharded(run, done, model, optimizer, runlog.state() if d.main else None,
                                 to_dict(cfg) if d.main else None, t.keep_checkpoints, d.main, best)
                elif d.main:
                    save_training(run, done, model, optimizer, runlog.state(), to_dict(cfg), t.keep_checkpoints, ema,
                                  best)
                if d.enabled:
                    torch.distributed.barrier()
            if stopping and done < t.steps:
                runlog.close()
                if d.main:
                    print(f"dualtower train: stopped after step {done} of {t.steps}; checkpoint {run.step(done)}\n"
                          f"resume with: dualtower train --resume {run.root}", file=sys.stderr, flush=True)
                distributed.shutdown(d)
                raise Stopped(stopping, done, run.step(done))
    finally:
        stop.uninstall()
    summary = runlog.close()
    distributed.shutdown(d)
    return summary


def train_transform(pre, data) -> ImageTransform:
    """Random resized crops (crop_scale < 1) or the eval transform; NaFlex models keep each image's aspect."""
    naflex = pre.resize_mode == "naflex"
    if not naflex and (data.max_patches or data.max_tokens_per_batch or not data.upscale):
        raise ValueError("data.max_patches, data.max_tokens_per_batch and data.upscale are for NaFlex models "
                         f"(SigLIP 2); this model takes {pre.image_size}x{pre.image_size} images")
    if not naflex:
        return TrainTransform(pre, scale=(data.crop_scale, 1.0)) if data.crop_scale < 1 else ImageTransform(pre)
    max_patches = data.max_patches or None
    if data.crop_scale < 1:
        return NaFlexTrainTransform(pre, max_patches, scale=(data.crop_scale, 1.0), upscale=data.upscale)
    return eval_transform(pre, max_patches, data.upscale)


def _absolute(spec: str) -> str:
    """A data spec or checkpoint naming a local path, made absolute; anything else (builtin:, hf-hub:, a
    registry name) as it is."""
    prefix = "classes:" if spec.startswith("classes:") else ""
    path = spec[len(prefix):]
    if not path or ":" in path.split("/")[0] or not (os.path.exists(path) or ".tar" in path):
        return spec
    return prefix + os.path.abspath(path)


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


def choose_loss(model: DualEncoder, t):
    """The run's loss, decided once: loss(image, text, all_image, all_text, offset) -> scalar."""
    if t.loss == "clip" and t.loss_chunk:
        return lambda i, x, ai, ax, o: chunked_clip_loss(i, x, model.scale(), ai, ax, o, t.label_smoothing,
                                                         t.loss_chunk)
    if t.loss == "clip":
        return lambda i, x, ai, ax, o: clip_loss(i, x, model.scale(), ai, ax, o, t.label_smoothing)
    if t.loss_chunk:
        return lambda i, x, ai, ax, o: chunked_siglip_loss(i, x, model.scale(), model.logit_bias, ax, o,
                                                           t.loss_chunk)
    return lambda i, x, ai, ax, o: siglip_loss(i, x, model.scale(), model.logit_bias, ax, o)


def _prepare(model: DualEncoder, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    model.visual.set_patch_dropout(cfg.model.patch_dropout)
    model.set_dropout(cfg.model.dropout)
    model.set_drop_path(cfg.model.drop_path)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    for tower, locked in ((model.visual, cfg.model.lock_image), (model.text, cfg.model.lock_text)):
        tower.requires_grad_(not locked)
    return [p for p in model.parameters() if p.requires_grad]


def _all_finite(loss: torch.Tensor, grad_norm: torch.Tensor, d) -> bool:
    finite = torch.tensor([float(torch.isfinite(loss) and torch.isfinite(grad_norm))], device=d.device)
    if d.enabled:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return finite.item() == 1.0


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
            raise ValueError(f"train.steps cannot change on resume: the run's learning rate warms up and decays "
                             f"to zero at step {steps}, and a new end would move it back up. To train on, start "
                             f"a new run from this one's weights: --model.init={run_dir} with its own schedule")
        if key not in RESUMABLE_CHANGES:
            raise ValueError(f"{key} cannot change on resume; what can: {', '.join(RESUMABLE_CHANGES)}")
    return build(TrainConfig, apply_overrides(saved, overrides))
