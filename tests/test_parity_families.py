"""Parity for the families beyond CLIP: EVA-02 (open_clip EVA02-*, timm eva02_*), SigLIP (open_clip *-SigLIP,
timm), InternViT (timm vit_intern300m, transformers' InternVLVisionModel, the InternVL checkpoint layout) and
timm ViTs with per-head QK-norm. Same random weights in the reference and in ours; fp32; max |diff| relative
to max |reference| <= 1e-5."""

import open_clip
import pytest
import timm
import torch

import dualtower
from dualtower import checkpoint
from dualtower.archs import OPENCLIP_TIMM_NAMES, get_config
from dualtower.config import ModelConfig, PreprocessConfig, VisionConfig
from dualtower.convert import timm_vit

from .conftest import CAPTIONS, assert_close


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move norms, biases, layer scales and learned tokens off their constant inits so they are tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 or any(s in name for s in ("norm", "ln", "gamma", "ls", "lambda", "token", "latent",
                                                      "probe", "pos", "logit")):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _vision_only(vision: VisionConfig, embed_dim: int) -> ModelConfig:
    return ModelConfig(name="vision-only", embed_dim=embed_dim, vision=vision, text=None,
                       preprocess=PreprocessConfig(image_size=vision.image_size))


def _pixels(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- open_clip


def _ids_for(cfg, n: int = 4) -> torch.Tensor:
    if cfg.tokenizer == "clip-bpe":
        return dualtower.get_tokenizer(cfg)(CAPTIONS[:n])
    # SigLIP: its SentencePiece vocabulary is not bundled; random ids padded with its pad id to the context.
    g = torch.Generator().manual_seed(3)
    ids = torch.full((n, cfg.text.context_length), cfg.text.pad_id)
    for row in range(n):
        length = 5 + 7 * row
        ids[row, :length] = torch.randint(2, cfg.text.vocab_size, (length,), generator=g)
    return ids


def _compare_open_clip(ref, ours, cfg):
    pixels, ids = _pixels(cfg.vision.image_size), _ids_for(cfg)
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(pixels), ref.encode_text(ids)
        ref_logits = ref.logit_scale.exp() * ref.encode_image(pixels, normalize=True) @ \
            ref.encode_text(ids, normalize=True).T
        if getattr(ref, "logit_bias", None) is not None:
            ref_logits = ref_logits + ref.logit_bias
        out = ours(pixels, ids)
        return (assert_close(ours.encode_image(pixels), ref_img, "image embeddings"),
                assert_close(ours.encode_text(ids), ref_txt, "text embeddings"),
                assert_close(out.logits_per_image, ref_logits, "logits"))


FAST_OPEN_CLIP = ["EVA02-B-16", "ViT-B-16-SigLIP"]
SLOW_OPEN_CLIP = ["EVA02-L-14", "ViT-SO400M-14-SigLIP"]


@pytest.mark.parametrize("name", FAST_OPEN_CLIP + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW_OPEN_CLIP])
def test_open_clip_timm_models_match(name, tmp_path):
    torch.manual_seed(0)
    ref = perturb(open_clip.create_model(name).eval())
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    ours = dualtower.load(path, arch=name)
    diffs = _compare_open_clip(ref, ours, get_config(name))
    print(f"{name}: image {diffs[0]:.2e} text {diffs[1]:.2e} logits {diffs[2]:.2e}")

    # And back: our open_clip export loads into open_clip with the same weights.
    out = tmp_path / "exported.safetensors"
    checkpoint.export_open_clip(ours, out)
    from safetensors.torch import load_file

    again = open_clip.create_model(name).eval()
    again.load_state_dict(load_file(out), strict=True)
    _compare_open_clip(again, ours, get_config(name))


@pytest.mark.parametrize("name", sorted(OPENCLIP_TIMM_NAMES))
def test_every_timm_family_config_has_open_clip_keys_and_shapes(name):
    with torch.device("meta"):
        ref = open_clip.create_model(name, device="meta")
        ours = dualtower.DualEncoder(get_config(name))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    from dualtower.convert import open_clip as oc

    exported = oc.export_state_dict(dict(ours.state_dict()), ours.cfg)
    assert {k: tuple(v.shape) for k, v in exported.items()} == ref_shapes


# -------------------------------------------------------------------------------------------------- timm


def _compare_timm(ref, cfg):
    ours = dualtower.DualEncoder(cfg).eval()
    ours.load_state_dict(timm_vit.import_state_dict(ref.state_dict(), cfg, set(ours.state_dict()), "timm"))
    pixels = _pixels(cfg.vision.image_size)
    with torch.no_grad():
        diff = assert_close(ours.encode_image(pixels), ref(pixels), "image embeddings")
    exported = timm_vit.export_state_dict(dict(ours.state_dict()), cfg)
    assert set(exported) == set(ref.state_dict())
    return ours, diff


TIMM_CASES = {
    # EVA-02 CLIP: q/v-only bias, attention and MLP sub-LN, SwiGLU, 2-D RoPE (ref grid 16 on a 4x4 grid), head bias.
    "eva02": ("eva02_base_patch16_clip_224", dict(img_size=64, embed_dim=64, depth=2, num_heads=4, num_classes=32),
              VisionConfig(image_size=64, patch_size=16, width=64, depth=2, heads=4, mlp_dim=170, norm_eps=1e-6,
                           patch_bias=True, norm_pre=False, k_bias=False, attn_norm=True, mlp_type="swiglu",
                           mlp_norm=True, rope=True, rope_ref_grid=16, head_bias=True), 32),
    # SigLIP: no class token, MAP pooling, no projection.
    "siglip": ("vit_base_patch16_siglip_224", dict(img_size=64, embed_dim=64, depth=2, num_heads=4, num_classes=0),
               VisionConfig(image_size=64, patch_size=16, width=64, depth=2, heads=4, mlp_dim=256, norm_eps=1e-6,
                            patch_bias=True, norm_pre=False, class_token=False, pool="map", head=False), 64),
    # InternViT-300M: layer scale 0.1, no final norm, class token out.
    "intern300m": ("vit_intern300m_patch14_448",
                   dict(img_size=56, embed_dim=64, depth=2, num_heads=4, num_classes=0, dynamic_img_size=False),
                   VisionConfig(image_size=56, patch_size=14, width=64, depth=2, heads=4, mlp_dim=256,
                                norm_eps=1e-6, patch_bias=True, norm_pre=False, ls_init=0.1, final_norm="none",
                                head=False), 64),
    # Per-head QK-norm.
    "qk_norm": ("vit_base_patch16_224", dict(img_size=32, embed_dim=64, depth=2, num_heads=4, num_classes=10,
                                             qk_norm=True),
                VisionConfig(image_size=32, patch_size=16, width=64, depth=2, heads=4, mlp_dim=256, norm_eps=1e-6,
                             patch_bias=True, norm_pre=False, qk_norm="head", head_bias=True), 10),
}


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_towers_match(case):
    name, kwargs, vision, embed = TIMM_CASES[case]
    torch.manual_seed(0)
    ref = perturb(timm.create_model(name, pretrained=False, **kwargs).eval())
    _, diff = _compare_timm(ref, _vision_only(vision, embed))
    print(f"timm {case}: image {diff:.2e}")


def test_eva_rope_follows_other_image_sizes():
    """At another input size timm resizes the learned positions and rescales the rotary grid to the reference
    grid; ours does the same with interpolate_pos=True."""
    name, kwargs, vision, embed = TIMM_CASES["eva02"]
    torch.manual_seed(0)
    ref = perturb(timm.create_model(name, pretrained=False, **dict(kwargs, dynamic_img_size=True)).eval())
    cfg = _vision_only(vision, embed)
    ours = dualtower.DualEncoder(cfg).eval()
    ours.load_state_dict(timm_vit.import_state_dict(ref.state_dict(), cfg, set(ours.state_dict()), "timm"))
    pixels = _pixels(96)
    with torch.no_grad():
        assert_close(ours.encode_image(pixels, interpolate_pos=True), ref(pixels), "image embeddings at 96 px")
