"""Losses equal open_clip's on the same inputs; 2 processes x B/2 equal 1 process x B (loss and gradients)."""

import tempfile

import open_clip.loss as oc_loss
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import dualtower

from dualtower import distributed
from dualtower.losses import clip_loss, siglip_loss


def _embeddings(n=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_clip_loss_equals_open_clip():
    img, txt = _embeddings()
    scale = torch.tensor(14.3)
    assert torch.allclose(clip_loss(img, txt, scale), oc_loss.ClipLoss()(img, txt, scale), atol=1e-6)


def test_clip_loss_label_smoothing_by_hand():
    img, txt = _embeddings()
    scale, eps = torch.tensor(14.3), 0.1
    expected = 0
    for logits in (scale * img @ txt.T, scale * txt @ img.T):
        logp = logits.log_softmax(dim=-1)
        expected = expected + (-(1 - eps) * logp.diagonal() - eps * logp.mean(dim=-1)).mean() / 2
    assert torch.allclose(clip_loss(img, txt, scale, label_smoothing=eps), expected, atol=1e-6)


def test_siglip_loss_equals_open_clip():
    img, txt = _embeddings()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    assert torch.allclose(siglip_loss(img, txt, scale, bias), oc_loss.SigLipLoss()(img, txt, scale, bias), atol=1e-6)


def _batch(n=12):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 32, 32, generator=g), dualtower.get_tokenizer("tiny")(
        [f"caption number {i} of a batch" + " word" * i for i in range(n)])


def _model_step(kind, dtype, rank=0, world=1):
    """Loss and parameter gradients of one process's share of a fixed batch, through the real model."""
    model = dualtower.create_model(dualtower.get_config("tiny").replace(init_logit_bias=-8.0), seed=0)
    model = model.to(dtype).train()
    pixels, ids = _batch()
    pixels = pixels.to(dtype)
    lo, hi = rank * len(ids) // world, (rank + 1) * len(ids) // world
    image = model.encode_image(pixels[lo:hi], normalize=True)
    text = model.encode_text(ids[lo:hi], normalize=True)
    all_image, all_text, offset = distributed.gather_features(image, text) if world > 1 else (image, text, 0)
    loss = (clip_loss(image, text, model.scale(), all_image, all_text, offset) if kind == "clip"
            else siglip_loss(image, text, model.scale(), model.logit_bias, all_text, offset))
    loss.backward()
    params = list(model.parameters())
    if world > 1:
        distributed.average_gradients(params, world)
        torch.distributed.all_reduce(loss.detach())
    return loss.detach() / world, torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                             for p in params])


def _worker(rank, world, init_file, kind, dtype, out_file):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    loss, grads = _model_step(kind, dtype, rank, world)
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out_file)
    torch.distributed.barrier()  # no rank tears down gloo while another still talks to it
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_processes_equal_one_process(kind, dtype, tmp_path):
    """In float64 the split is exact to 1e-6 absolute (in fact ~1e-15). In float32 the bound is 1e-6 relative to
    the largest gradient: gradients here reach ~20, where float32 values are 2e-6 apart, so an absolute 1e-6
    would ask for more precision than float32 has."""
    ref_loss, ref_grads = _model_step(kind, dtype)
    out = tmp_path / "result.pt"
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_worker, args=(2, init_file, kind, dtype, str(out)), nprocs=2, join=True)
    result = torch.load(out)
    loss_diff = abs(float(result["loss"] - ref_loss))
    grad_diff = float((result["grads"] - ref_grads).abs().max())
    print(f"{kind} {dtype}: loss {float(ref_loss):.4f} diff {loss_diff:.2e}; grad max {float(ref_grads.abs().max()):.3g} "
          f"diff {grad_diff:.2e}")
    scale = 1.0 if dtype == torch.float64 else float(ref_grads.abs().max())
    assert loss_diff <= 1e-6
    assert grad_diff <= 1e-6 * scale
