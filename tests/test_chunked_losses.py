"""Chunked losses equal the plain ones, loss and gradients, at sizes that are and are not multiples of the tile."""

import pytest
import torch
import torch.nn.functional as F

from dualtower.chunked_losses import chunked_clip_loss, chunked_siglip_loss
from dualtower.losses import clip_loss, siglip_loss

RTOL = 1e-5


def _inputs(b, d, n_all=None, offset=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    leaves = [img.requires_grad_(), txt.requires_grad_(), torch.tensor(14.0, requires_grad=True),
              torch.tensor(-6.0, requires_grad=True)]
    if n_all is None:
        return leaves, None
    others = [F.normalize(torch.randn(n_all - b, d, generator=g), dim=-1) for _ in range(2)]
    return leaves, (others, offset)


def _gathered(leaves, extra):
    """all_image / all_text as a gather would make them: others' rows around ours, gradient flowing to ours."""
    (other_img, other_txt), offset = extra
    img, txt = leaves[0], leaves[1]
    all_img = torch.cat([other_img[:offset], img, other_img[offset:]])
    all_txt = torch.cat([other_txt[:offset], txt, other_txt[offset:]])
    return all_img, all_txt, offset


def _grads(loss_fn, leaves, extra, kind, **kw):
    img, txt, scale, bias = leaves
    if extra is None:
        loss = loss_fn(img, txt, scale, **kw) if kind == "clip" else loss_fn(img, txt, scale, bias, **kw)
    else:
        all_img, all_txt, offset = _gathered(leaves, extra)
        loss = (loss_fn(img, txt, scale, all_img, all_txt, offset, **kw) if kind == "clip"
                else loss_fn(img, txt, scale, bias, all_txt, offset, **kw))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), [torch.zeros(()) if g is None else g for g in grads]


def _assert_equal(plain, chunked):
    (l1, g1), (l2, g2) = plain, chunked
    assert abs(float(l1 - l2)) <= RTOL * abs(float(l1))
    for a, b, name in zip(g1, g2, ["image", "text", "scale", "bias"]):
        scale = float(a.abs().max()) or 1.0
        assert float((a - b).abs().max()) <= RTOL * scale, name


@pytest.mark.parametrize("b,chunk", [(64, 64), (100, 32), (257, 64), (33, 100)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_clip_equals_plain(b, chunk, smoothing):
    leaves, _ = _inputs(b, 24)
    _assert_equal(_grads(clip_loss, leaves, None, "clip", label_smoothing=smoothing),
                  _grads(chunked_clip_loss, leaves, None, "clip", label_smoothing=smoothing, chunk=chunk))


@pytest.mark.parametrize("b,chunk", [(64, 64), (100, 32), (257, 64)])
def test_chunked_siglip_equals_plain(b, chunk):
    leaves, _ = _inputs(b, 24)
    _assert_equal(_grads(siglip_loss, leaves, None, "siglip"),
                  _grads(chunked_siglip_loss, leaves, None, "siglip", chunk=chunk))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("b,n_all,offset", [(50, 150, 50), (37, 111, 74), (40, 80, 0)])
def test_chunked_local_rows_global_columns(kind, b, n_all, offset):
    """The multi-process local loss: local rows against gathered columns, gradients reaching the local rows."""
    leaves, extra = _inputs(b, 24, n_all, offset)
    plain, chunked = (clip_loss, chunked_clip_loss) if kind == "clip" else (siglip_loss, chunked_siglip_loss)
    _assert_equal(_grads(plain, leaves, extra, kind), _grads(chunked, leaves, extra, kind, chunk=32))
