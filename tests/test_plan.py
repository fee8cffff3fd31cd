"""`dualtower plan` against what a model really holds: parameters and AdamW state byte for byte, activations
against the tensors autograd saves for the backward pass (counted with saved-tensor hooks)."""

import subprocess
import sys

import pytest
import torch

import dualtower
from dualtower import distributed
from dualtower.plan import activation_bytes_per_sample, plan


def test_weights_gradients_and_optimizer_state_are_exact():
    model = dualtower.create_model("small-digits", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixels, ids = torch.randn(2, 3, 32, 32), dualtower.get_tokenizer("small-digits")(["a", "b"])
    model(pixels, ids).logits_per_image.sum().backward()
    optimizer.step()
    p = plan("small-digits", gpus=1, batch=2, parallel="ddp", precision="fp32")
    grads = sum(q.grad.numel() * q.grad.element_size() for q in model.parameters())
    assert p.weights + p.optimizer == distributed.local_bytes(model, optimizer)
    assert p.grads == grads
    halved = plan("small-digits", gpus=2, batch=2, parallel="fsdp", precision="fp32")
    assert halved.weights == p.weights / 2 and halved.optimizer == p.optimizer / 2  # test_fsdp measures 0.500x


def _saved_bytes(model, pixels, ids) -> int:
    """Bytes of the distinct storages autograd saves in one training forward pass, parameters left out."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(pixels, ids).logits_per_image.sum()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("arch", ["small-digits", "tiny", "ViT-S-32"])
def test_activation_estimate_follows_the_saved_tensors(arch):
    model = dualtower.create_model(arch, seed=0).train()
    cfg, batch = model.cfg, 4
    pixels = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = dualtower.get_tokenizer(arch)(["a photo of something " * 20] * batch)  # the full context
    measured = _saved_bytes(model, pixels, ids)
    planned = batch * activation_bytes_per_sample(cfg, 4, grad_checkpointing=False)
    print(f"{arch}: activations planned {planned / 2**20:.1f} MB, saved {measured / 2**20:.1f} MB")
    assert 0.95 <= planned / measured <= 1.2
    # Checkpointed: the forward keeps little more than each block's input; the plan adds one block recomputed.
    model.set_grad_checkpointing(True)
    kept = _saved_bytes(model, pixels, ids)
    assert kept < batch * activation_bytes_per_sample(cfg, 4, grad_checkpointing=True) < planned


def test_plan_command_prints_a_table_and_refuses_a_bad_split():
    out = subprocess.run([sys.executable, "-m", "dualtower", "plan", "ViT-bigG-14", "--gpus", "8", "64",
                          "--batch", "4096", "--grad-checkpointing"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("total") == 2 and "2.54B parameters" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "dualtower", "plan", "ViT-B-32", "--gpus", "3", "--batch", "8"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "multiple of the 3 GPU(s)" in bad.stderr
