"""Losses equal open_clip's on the same inputs; 2 processes x B/2 equal 1 process x B (loss and gradients)."""

import os
import tempfile

import open_clip.loss as oc_loss
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

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


def _step(kind, img, txt, rank=0, world=1):
    """Loss and gradients (w.r.t. both embedding sets, scale, bias) of one process's rows."""
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    scale, bias = torch.tensor(12.0, requires_grad=True), torch.tensor(-8.0, requires_grad=True)
    lo, hi = rank * len(img) // world, (rank + 1) * len(img) // world
    li, lt = img[lo:hi], txt[lo:hi]
    if world > 1:
        all_i, all_t, offset = distributed.gather_features(li, lt)
    else:
        all_i, all_t, offset = li, lt, 0
    loss = (clip_loss(li, lt, scale, all_i, all_t, offset) if kind == "clip"
            else siglip_loss(li, lt, scale, bias, all_t, offset))
    loss.backward()
    grads = [img.grad, txt.grad, scale.grad.view(1), bias.grad.view(1) if bias.grad is not None else torch.zeros(1)]
    return loss.detach(), grads


def _worker(rank, world, init_file, kind, out_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    img, txt = _embeddings(n=12)
    loss, grads = _step(kind, img, txt, rank, world)
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)  # each process holds the gradient of its own loss; average them
    torch.distributed.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": flat / world}, out_file)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_processes_equal_one_process(kind, tmp_path):
    img, txt = _embeddings(n=12)
    ref_loss, ref_grads = _step(kind, img, txt)
    ref_flat = torch.cat([g.reshape(-1) for g in ref_grads])
    out = tmp_path / "result.pt"
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_worker, args=(2, init_file, kind, str(out)), nprocs=2, join=True)
    result = torch.load(out)
    assert abs(float(result["loss"] - ref_loss)) <= 1e-6
    assert float((result["grads"] - ref_flat).abs().max()) <= 1e-6
