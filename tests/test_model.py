"""Model behaviour that parity tests do not pin down: pooling rules, shapes, options, the output type."""

import math

import pytest
import torch

import dualtower
from dualtower.model.layers import Block, LayerScale, PostNormBlock


@pytest.fixture(scope="module")
def model():
    return dualtower.create_model("tiny", seed=0)


def test_text_without_end_token_is_an_error(model):
    ids = dualtower.get_tokenizer(model)(["a cat", "a dog"])
    ids[1, ids[1] == model.cfg.text.eot_id] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] have no end-of-text token"):
        model.encode_text(ids)


def test_pooling_reads_the_first_end_token_and_ignores_what_follows(model):
    tok = dualtower.get_tokenizer(model)
    ids = tok(["a cat on a mat"])
    eot = int((ids[0] == tok.eot_id).nonzero()[0])
    noisy = ids.clone()
    noisy[0, eot + 1:] = torch.randint(0, 49000, (ids.shape[1] - eot - 1,))
    noisy[0, -1] = tok.eot_id  # a second end token later on changes nothing either
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), model.encode_text(noisy), atol=1e-6)


def test_batch_computed_to_longest_sequence_equals_full_length(model):
    tok = dualtower.get_tokenizer(model)
    short, mixed = tok(["a cat"]), tok(["a cat", " ".join(["word"] * 70)])
    with torch.no_grad():
        alone, together = model.encode_text(short), model.encode_text(mixed)[:1]
    assert (alone - together).abs().max() <= 1e-5 * together.abs().max()


def test_cpu_ids_for_a_tower_elsewhere_are_trimmed_then_moved():
    """A tower on another device takes ids from the CPU: checked and trimmed there, so only the used positions
    travel (here the meta device stands in for an accelerator: shapes and devices are computed, not values)."""
    on_meta = dualtower.create_model("tiny", seed=0).to("meta")
    tok = dualtower.get_tokenizer(on_meta)
    seen = []
    on_meta.text.token_embed.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    out = on_meta.encode_text(tok(["a cat", "a cat on a mat"]))
    assert out.device.type == "meta" and out.shape == (2, on_meta.cfg.embed_dim)
    assert seen[0].device.type == "meta" and seen[0].shape == (2, 7)  # start, 5 words, end
    bad = tok(["a cat"])
    bad[0, bad[0] == tok.eot_id] = 0
    with pytest.raises(ValueError, match="no end-of-text token"):
        on_meta.encode_text(bad)


def test_forward_returns_one_dataclass_with_normalised_embeddings(model):
    out = model(torch.randn(3, 3, 32, 32), dualtower.get_tokenizer(model)(["a", "b"]))
    assert out.image_embeds.shape == (3, 48) and out.text_embeds.shape == (2, 48)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert out.logits_per_image.shape == (3, 2) and out.logits_per_text.shape == (2, 3)
    assert math.isclose(float(out.logit_scale.detach()), 1 / 0.07, rel_tol=1e-5)


def test_logit_scale_is_clamped_at_100(model):
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    try:
        assert math.isclose(float(model.scale()), 100.0, rel_tol=1e-6)
    finally:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1 / 0.07))


def test_options_compose_into_the_shared_block():
    post = dualtower.create_model("tiny-post-rms")
    block = post.visual.transformer.blocks[0]
    assert isinstance(block, PostNormBlock) and isinstance(block.norm1, torch.nn.RMSNorm)
    assert post.visual.patch_embed.bias is not None and post.visual.head.bias is not None
    ls = dualtower.create_model("tiny-ls-mean").visual.transformer.blocks[0]
    assert type(ls) is Block and isinstance(ls.ls1, LayerScale)
    plain = dualtower.create_model("tiny").visual.transformer.blocks[0]
    assert isinstance(plain.ls1, torch.nn.Identity)


def test_wrong_image_size_is_a_clear_error(model):
    with pytest.raises(ValueError, match="takes 32x32"):
        model.encode_image(torch.randn(1, 3, 48, 48))


def test_create_model_seed_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a, b = dualtower.create_model("tiny", seed=7), dualtower.create_model("tiny", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        m = dualtower.create_model("tiny", seed=0).train()
        m.set_grad_checkpointing(checkpointing)
        out = m(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
                dualtower.get_tokenizer(m)(["a", "b"]))
        out.logits_per_image.sum().backward()
        return [p.grad.clone() for p in m.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "tiny-convnext"])
def test_checkpointed_recompute_draws_the_forwards_keyed_noise(name):
    """Dropout and drop path are keyed per sample inside `sample_keys`, and backward (where checkpointing
    recomputes each block) runs after it: the recompute must draw the forward's masks. It did not (a gradient
    0.45 off relative to the unCheckpointed one) until checkpointing carried the keys into the recompute."""
    from dualtower.model.noise import sample_keys

    def grads(checkpointing):
        m = dualtower.create_model(name, seed=0).train()
        m.set_drop_path(0.3, 0.3)
        if name == "tiny":
            m.set_dropout(0.2)
        m.set_grad_checkpointing(checkpointing)
        size = m.cfg.vision.image_size
        pixels = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        with sample_keys(torch.arange(4)):
            out = m(pixels, dualtower.get_tokenizer(m)(["a", "b", "c", "d"]))
        out.logits_per_image.diagonal().sum().backward()  # outside the keys, as the training loop does
        return [p.grad.clone() for p in m.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_config_json_round_trip_and_unknown_keys():
    cfg = dualtower.get_config("ViT-L-14-336")
    assert dualtower.ModelConfig.from_dict(cfg.to_dict()) == cfg
    data = cfg.to_dict()
    data["text"]["heads_typo"] = 3
    with pytest.raises(ValueError, match="heads_typo"):
        dualtower.ModelConfig.from_dict(data)
