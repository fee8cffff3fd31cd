"""Gradient-cache steps equal one plain full-batch step, with dropout and patch dropout on, on 1 and 2 processes."""

import dataclasses
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

import dualtower
from dualtower import distributed
from dualtower.chunked_losses import chunked_clip_loss, chunked_siglip_loss
from dualtower.losses import clip_loss, siglip_loss
from dualtower.train.gradcache import encode, grad_cache_step

B = 12
RTOL = 1e-5


def _model(eva: bool = False):
    cfg = dualtower.get_config("tiny").replace(init_logit_bias=-5.0)
    if eva:  # EVA-02 blocks: q/v bias, sub-LNs, SwiGLU, 2-D RoPE (its angles follow the kept patches), layer scale
        cfg = cfg.replace(vision=dataclasses.replace(
            cfg.vision, k_bias=False, attn_norm=True, mlp_type="swiglu", mlp_norm=True, rope=True, ls_init=0.1,
            patch_bias=True, norm_pre=False))
    model = dualtower.create_model(cfg, seed=0).train()
    model.set_dropout(0.1)
    model.visual.set_patch_dropout(0.5)
    if eva:
        model.set_drop_path(0.3, text=0.2)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = dualtower.get_tokenizer("tiny")([f"sample {i}" + " more" * (i % 5) for i in range(B)])
    return torch.randn(B, 3, 32, 32, generator=g), ids, torch.arange(B, dtype=torch.int64) + (7 << 32)


def _loss_fn(model, kind, chunk):
    def fn(image, text, all_image, all_text, offset):
        if kind == "clip":
            return (chunked_clip_loss(image, text, model.scale(), all_image, all_text, offset, chunk=chunk) if chunk
                    else clip_loss(image, text, model.scale(), all_image, all_text, offset))
        return (chunked_siglip_loss(image, text, model.scale(), model.logit_bias, all_text, offset, chunk=chunk)
                if chunk else siglip_loss(image, text, model.scale(), model.logit_bias, all_text, offset))
    return fn


def _grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def _plain(kind, eva=False):
    model = _model(eva)
    pixels, ids, keys = _batch()
    image, text = encode(model, pixels, ids, keys, torch.autocast("cpu", enabled=False))
    loss = _loss_fn(model, kind, 0)(image, text, image, text, 0)
    loss.backward()
    return loss.detach(), _grads(model)


def _close(a, b):
    return float((a - b).abs().max()) <= RTOL * float(b.abs().max())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("micro,chunk", [(5, 0), (4, 5), (12, 0)])
def test_grad_cache_step_equals_plain_step(kind, micro, chunk):
    ref_loss, ref_grads = _plain(kind)
    model = _model()
    pixels, ids, keys = _batch()
    loss = grad_cache_step(model, pixels, ids, keys, micro, _loss_fn(model, kind, chunk), gather=False)
    assert _close(loss, ref_loss) and _close(_grads(model), ref_grads)


def test_grad_cache_step_with_eva_blocks_drop_path_and_rope():
    ref_loss, ref_grads = _plain("clip", eva=True)
    model = _model(eva=True)
    assert isinstance(model.visual.transformer.blocks[0].path1, torch.nn.Identity)  # rate 0 at the first block
    assert model.visual.transformer.blocks[-1].path1.prob == pytest.approx(0.3)
    pixels, ids, keys = _batch()
    loss = grad_cache_step(model, pixels, ids, keys, 5, _loss_fn(model, "clip", 4), gather=False)
    assert _close(loss, ref_loss) and _close(_grads(model), ref_grads)


@pytest.mark.parametrize("locked", ["visual", "text"])
def test_grad_cache_step_with_a_locked_tower(locked):
    """LiT: the locked tower's embeddings carry no graph; the other tower's gradients equal the plain step's."""
    def run(micro):
        model = _model()
        getattr(model, locked).requires_grad_(False)
        pixels, ids, keys = _batch()
        if micro:
            loss = grad_cache_step(model, pixels, ids, keys, micro, _loss_fn(model, "clip", 0), gather=False)
        else:
            image, text = encode(model, pixels, ids, keys, torch.autocast("cpu", enabled=False))
            loss = _loss_fn(model, "clip", 0)(image, text, image, text, 0)
            loss.backward()
        return loss.detach(), _grads(model)

    (ref_loss, ref_grads), (loss, grads) = run(0), run(5)
    assert _close(loss, ref_loss) and _close(grads, ref_grads) and ref_grads.abs().max() > 0


def test_drop_path_is_really_on():
    model = _model(eva=True)
    pixels, ids, keys = _batch()
    model.visual.set_patch_dropout(0.0)
    model.set_dropout(0.0)
    a, _ = encode(model, pixels, ids, keys, torch.autocast("cpu", enabled=False))
    b, _ = encode(model, pixels, ids, keys + 1000, torch.autocast("cpu", enabled=False))
    model.set_drop_path(0.0)
    c, _ = encode(model, pixels, ids, keys + 1000, torch.autocast("cpu", enabled=False))
    assert not torch.allclose(a, b) and not torch.allclose(b, c)


def test_noise_is_really_on():
    """Without the per-sample keys the two passes would differ: the masks change the output."""
    model = _model()
    pixels, ids, keys = _batch()
    a, _ = encode(model, pixels, ids, keys, torch.autocast("cpu", enabled=False))
    b, _ = encode(model, pixels, ids, keys + 1000, torch.autocast("cpu", enabled=False))
    assert not torch.allclose(a, b)


def _worker(rank, world, init_file, kind, out_file):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = _model()
    pixels, ids, keys = _batch()
    part = slice(rank * B // world, (rank + 1) * B // world)
    loss = grad_cache_step(model, pixels[part], ids[part], keys[part], 4, _loss_fn(model, kind, 4), gather=True)
    distributed.average_gradients(list(model.parameters()), world)
    torch.distributed.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": _grads(model)}, out_file)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_grad_cache_on_two_processes_equals_plain_step(kind, tmp_path):
    ref_loss, ref_grads = _plain(kind)
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, tempfile.mktemp(dir=tmp_path), kind, str(out)), nprocs=2, join=True)
    result = torch.load(out)
    assert _close(result["loss"], ref_loss) and _close(result["grads"], ref_grads)


def test_train_config_micro_batch_gives_the_plain_losses(tmp_path):
    from dualtower import configtree
    from dualtower.train.config import TrainConfig
    from dualtower.train.loop import train

    losses = {}
    for micro in (0, 12):
        out = tmp_path / f"m{micro}"
        cfg = configtree.load(TrainConfig, None, [
            "--model.arch=tiny", "--data.batch_size=48", "--train.steps=3", "--train.log_every=1",
            "--train.progress=false", "--data.workers=0", "--model.dropout=0.1", "--model.patch_dropout=0.3",
            f"--train.micro_batch={micro}", "--train.loss_chunk=16", f"--train.out={out}"])
        train(cfg)
        import json

        losses[micro] = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(a - b) <= RTOL * abs(a) for a, b in zip(losses[0], losses[12]))
