"""One contrastive step at a batch larger than memory allows for activations (gradient cache, Gao et al. 2021).

1. Embed the whole (local) batch in micro-batches without autograd.
2. Gather across processes, compute the loss on the full batch (the chunked loss keeps the logits small) and
   back-propagate to the embeddings only: their gradients are cached. The logit scale and bias get theirs here.
3. Re-run each micro-batch with autograd and back-propagate its cached embedding gradients.

The parameter gradients equal those of one plain step on the full batch: noise is keyed per sample (see
model.noise), so dropout and patch dropout draw the same masks in both passes and in the plain step, and the
global random state is replayed per micro-batch for anything else. Gradients are synchronised across
processes once, by the caller, after the step.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .. import distributed
from ..model import DualEncoder
from ..model.noise import sample_keys


def encode(model: DualEncoder, pixels: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor, autocast):
    with sample_keys(keys), autocast:
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(ids, normalize=True)
    return image.float(), text.float()


def grad_cache_step(model: DualEncoder, pixels: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor,
                    micro_batch: int, loss_fn: Callable, gather: bool, autocast=None) -> torch.Tensor:
    """Accumulates the step's parameter gradients (unsynchronised) and returns the loss.

    loss_fn(image, text, all_image, all_text, offset) -> scalar, using the model's scale and bias.
    """
    autocast = autocast or contextlib.nullcontext()
    parts = [slice(s, s + micro_batch) for s in range(0, len(ids), micro_batch)]
    states = []
    with torch.no_grad():
        cached = []
        for part in parts:
            states.append(torch.random.get_rng_state())
            cached.append(encode(model, pixels[part], ids[part], keys[part], autocast))
    image = torch.cat([c[0] for c in cached]).requires_grad_()
    text = torch.cat([c[1] for c in cached]).requires_grad_()
    all_image, all_text, offset = distributed.gather_features(image, text) if gather else (image, text, 0)
    loss = loss_fn(image, text, all_image, all_text, offset)
    loss.backward()  # gradients of the embeddings (cached), and of the scale and bias (final)
    after = torch.random.get_rng_state()
    for part, state in zip(parts, states):
        torch.random.set_rng_state(state)
        part_image, part_text = encode(model, pixels[part], ids[part], keys[part], autocast)
        # A locked tower (LiT) gives embeddings without a graph: only the other one is back-propagated.
        pairs = [(e, g) for e, g in ((part_image, image.grad[part]), (part_text, text.grad[part])) if e.requires_grad]
        if pairs:
            torch.autograd.backward([e for e, _ in pairs], [g for _, g in pairs])
    torch.random.set_rng_state(after)
    return loss.detach()
