"""Training a NaFlex tower: token-budget batches by length bucket, the gradient-cache step with padded patch
sequences, and a run on images of many aspect ratios that resumes exactly."""

import json
import random

import pytest
import torch

import dualtower
from dualtower import configtree
from dualtower.data.packing import TokenBudgetPlan, pack_by_tokens
from dualtower.losses import siglip_loss
from dualtower.naflex import Patches
from dualtower.train.config import TrainConfig
from dualtower.train.gradcache import encode, grad_cache_step
from dualtower.train.loop import resume_config, train

from .test_siglip2 import _photos


def _lengths(n=300, seed=0):
    rng = random.Random(seed)
    return [rng.choice([rng.randint(10, 64), rng.randint(100, 256)]) for _ in range(n)]


@pytest.mark.parametrize("buckets", [1, 4, 8])
def test_token_budget_batches_fit_and_never_repeat(buckets):
    lengths = _lengths()
    batches = pack_by_tokens(lengths, 1024, buckets, 256)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))  # no record twice
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 1024
    dropped = len(lengths) - len(seen)
    assert dropped < buckets * 1024 // 10  # only each bucket's last partial batch is left out


def test_length_buckets_cut_padding():
    lengths = _lengths()

    def waste(buckets):
        batches = pack_by_tokens(lengths, 1024, buckets, 256)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1 - sum(lengths[i] for b in batches for i in b) / padded

    assert waste(8) < waste(4) < waste(1) and waste(8) < 0.15 < 0.3 < waste(1)


def test_token_budget_plan_is_a_function_of_seed_and_epoch_and_splits_evenly():
    lengths = _lengths()
    plans = [TokenBudgetPlan(lengths, 1024, 4, 256, seed=5, rank=r, world=2) for r in range(2)]
    again = TokenBudgetPlan(lengths, 1024, 4, 256, seed=5, rank=0, world=2)
    n = plans[0].steps_per_epoch
    for step in (0, 3, n - 1, n, 2 * n + 1, 1):  # out of order, across epochs: the same batches
        parts = [p.indices(step) for p in plans]
        assert len(parts[0]) == len(parts[1]) and not set(parts[0]) & set(parts[1])
        assert parts[0] == again.indices(step)
    epoch0 = {i for s in range(n) for i in plans[0].batch(s)}
    epoch1 = [plans[0].batch(n + s) for s in range(n)]
    assert {i for b in epoch1 for i in b} != epoch0 or epoch1 != [plans[0].batch(s) for s in range(n)]


def test_grad_cache_step_with_padded_patch_sequences_equals_plain_step():
    transform = dualtower.get_transform("tiny-naflex")
    photos = _photos() * 2
    pixels = Patches.collate([transform(p) for p in photos])
    assert (pixels.mask == 0).any()  # some images are padded
    ids = dualtower.get_tokenizer("tiny-naflex")([f"photo {i}" for i in range(len(photos))])
    keys = torch.arange(len(photos), dtype=torch.int64)

    def run(micro):
        cfg = dualtower.get_config("tiny-naflex").replace(init_logit_bias=-5.0)
        model = dualtower.create_model(cfg, seed=0).train()
        model.set_dropout(0.1)

        def loss_fn(image, text, all_image, all_text, offset):
            return siglip_loss(image, text, model.scale(), model.logit_bias, all_text, offset)

        if micro:
            loss = grad_cache_step(model, pixels, ids, keys, micro, loss_fn, gather=False)
        else:
            image, text = encode(model, pixels, ids, keys, torch.autocast("cpu", enabled=False))
            loss = loss_fn(image, text, image, text, 0)
            loss.backward()
        return loss.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])

    plain_loss, plain = run(0)
    for micro in (3, 5):
        loss, grads = run(micro)
        assert torch.allclose(loss, plain_loss, rtol=1e-5)
        assert float((grads - plain).abs().max()) <= 1e-5 * float(plain.abs().max())


@pytest.fixture(scope="module")
def aspect_data(tmp_path_factory):
    """48 photo crops of many sizes (8 to 40 pixels a side, so 1 to 16 patches of 8 at their own size) and aspect
    ratios, with captions, as a CSV captions file."""
    root = tmp_path_factory.mktemp("aspect")
    rng = random.Random(0)
    rows = ["image,caption"]
    photos = _photos()[:4]
    for i in range(48):
        photo = photos[i % 4]
        w, h = rng.randint(8, 40), rng.randint(8, 40)
        photo.resize((w * 4, h * 4)).crop((0, 0, w, h)).save(root / f"{i}.png")
        rows.append(f"{i}.png,photo {i % 4} crop {i}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root / "captions.csv"


def _config(data, out, steps, micro=0):
    return configtree.load(TrainConfig, None, [
        "--model.arch=tiny-naflex", f"--data.train={data}", "--data.max_tokens_per_batch=64",
        "--data.length_buckets=4", "--data.upscale=false", "--data.workers=0", "--data.crop_scale=0.8",
        "--train.loss=siglip", "--train.loss_chunk=4", f"--train.steps={steps}", "--train.save_every=2",
        "--train.keep_checkpoints=5", "--train.log_every=1", "--train.progress=false", "--train.deterministic=true",
        "--train.log_samples=true", f"--train.micro_batch={micro}", "--optim.warmup_steps=2", f"--train.out={out}"])


def _records(run, name):
    """The records of a run's log, without the wall-clock throughput."""
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"}
            for line in (run / name).read_text().splitlines()]


def test_naflex_training_on_mixed_aspect_ratios_resumes_exactly(aspect_data, tmp_path):
    """Token-budget batches of photos at their own sizes and aspect ratios, chunked SigLIP loss, gradient-cache
    micro-batches; then the same run resumed from its step-2 checkpoint repeats steps 2 to 5 bit for bit."""
    run = tmp_path / "run"
    summary = train(_config(aspect_data, run, 6, micro=3))
    assert summary["steps"] == 6
    first, samples = _records(run, "metrics.jsonl"), _records(run, "samples.rank0.jsonl")
    assert [m["step"] for m in first] == list(range(1, 7)) and all(m["loss"] == m["loss"] for m in first)
    assert len({len(s["ids"]) for s in samples}) > 1  # batches of several sizes: short sequences pack more

    step_2 = str(run / "checkpoints" / "step_000002")
    resumed = train(resume_config(step_2, []), resume=step_2)
    assert resumed["steps_this_run"] == 4
    assert _records(run, "metrics.jsonl") == first  # bitwise: the same losses
    assert _records(run, "samples.rank0.jsonl") == samples
    model = dualtower.load(run)
    assert model.cfg.vision.naflex
