"""Parity for the families beyond CLIP: EVA-02 (open_clip EVA02-*, timm eva02_*), SigLIP (open_clip *-SigLIP,
timm), InternViT (timm vit_intern300m, transformers' InternVLVisionModel, the InternVL checkpoint layout) and
timm ViTs with per-head QK-norm. Same random weights in the reference and in ours; fp32; max |diff| relative
to max |reference| <= 1e-5."""

import open_clip
import pytest
import timm
import torch

import dualtower
from dualtower import convert
from dualtower.archs import get_config
from dualtower.config import ModelConfig, PreprocessConfig, VisionConfig
from dualtower.convert.timm import tables as timm_vit

from .conftest import CAPTIONS, assert_close, save_hf


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
        length = min(5 + 7 * row, cfg.text.context_length)
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


FAST_OPEN_CLIP = ["EVA02-B-16", "ViT-B-16-SigLIP", "PE-Core-T-16-384"]
# SigLIP 2 (Gemma vocabulary, tanh GELU): full size, slow; the meta-device test covers all 15 configs' shapes
SLOW_OPEN_CLIP = ["PE-Core-B-16", "PE-Core-L-14-336", "EVA02-L-14", "ViT-SO400M-14-SigLIP", "ViT-B-32-SigLIP2-256",
                  "ViT-B-16-SigLIP2", "ViT-SO400M-16-SigLIP2-256"]


@pytest.mark.parametrize("name", FAST_OPEN_CLIP + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW_OPEN_CLIP])
def test_open_clip_timm_models_match(name, tmp_path):
    torch.manual_seed(0)
    ref = perturb(open_clip.create_model(name).eval())
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    ours = dualtower.load(path, arch=name)
    path.unlink()  # full-size files add up to many GB across runs
    diffs = _compare_open_clip(ref, ours, get_config(name))
    print(f"{name}: image {diffs[0]:.2e} text {diffs[1]:.2e} logits {diffs[2]:.2e}")

    # And back: our open_clip export loads into open_clip with the same weights.
    out = tmp_path / "exported.safetensors"
    convert.export(ours, out, "open_clip")
    from safetensors.torch import load_file

    again = open_clip.create_model(name).eval()
    again.load_state_dict(load_file(out), strict=True)
    out.unlink()
    _compare_open_clip(again, ours, get_config(name))


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

# Perception Encoder trunks, small: a 4x4 grid with the rotary reference grid set to it, as every PE config has.
_PE = dict(patch_bias=False, rope=True, rope_indexing="xy", pos_resize="bilinear", rope_ref_grid=4)
TIMM_CASES |= {
    # PE-Core-G's shape: no class token, RoPE counted from 0, an 8-head MAP head with a narrower MLP, head bias.
    "pe_core_g": ("vit_pe_core_gigantic_patch14_448",
                  dict(img_size=56, embed_dim=64, depth=2, num_heads=4, mlp_ratio=3.0, num_classes=32,
                       ref_feat_shape=(4, 4)),
                  VisionConfig(image_size=56, patch_size=14, width=64, depth=2, heads=4, mlp_dim=192,
                               class_token=False, pool="map", pool_heads=8, pool_mlp_dim=256, head_bias=True, **_PE),
                  32),
    # PE-Core-T's: class token, RoPE counted from 1.
    "pe_core": ("vit_pe_core_tiny_patch16_384",
                dict(img_size=64, embed_dim=64, depth=2, num_heads=4, num_classes=32, ref_feat_shape=(4, 4)),
                VisionConfig(image_size=64, patch_size=16, width=64, depth=2, heads=4, mlp_dim=256, rope_offset=1.0,
                             pool="map", pool_heads=8, pool_mlp_dim=256, head_bias=True, **_PE), 32),
    # PE-Spatial: no final norm, no head, timm's mean of the patch tokens.
    "pe_spatial": ("vit_pe_spatial_tiny_patch16_512",
                   dict(img_size=64, embed_dim=64, depth=2, num_heads=4, ref_feat_shape=(4, 4)),
                   VisionConfig(image_size=64, patch_size=16, width=64, depth=2, heads=4, mlp_dim=256,
                                rope_offset=1.0, pool="mean", final_norm="none", head=False, **_PE), 64),
    # PE-Lang: the same with layer scale 0.1.
    "pe_lang": ("vit_pe_lang_large_patch14_448",
                dict(img_size=56, embed_dim=64, depth=3, num_heads=4, ref_feat_shape=(4, 4)),
                VisionConfig(image_size=56, patch_size=14, width=64, depth=3, heads=4, mlp_dim=256, rope_offset=1.0,
                             ls_init=0.1, pool="mean", final_norm="none", head=False, **_PE), 64),
}


TIMM_CASES["aimv2"] = (  # AIMv2: patch-embedding RMSNorm, no class token, bias-free RMSNorm SwiGLU blocks, mean pool
    "aimv2_large_patch14_224", dict(img_size=56, embed_dim=64, depth=2, num_heads=4, num_classes=0),
    VisionConfig(image_size=56, patch_size=14, width=64, depth=2, heads=4, mlp_dim=176, norm="rmsnorm",
                 patch_bias=True, patch_norm=True, norm_pre=False, class_token=False, qkv_bias=False, proj_bias=False,
                 mlp_bias=False, mlp_type="swiglu", pool="mean", head=False), 64)


TIMM_CASES["tipsv2"] = (  # TIPSv2: a register token, positions for the patches only, layer scale 1
    "vit_base_patch14_reg1_tipsv2", dict(img_size=56, embed_dim=64, depth=2, num_heads=4, num_classes=0),
    VisionConfig(image_size=56, patch_size=14, width=64, depth=2, heads=4, mlp_dim=256, norm_eps=1e-6,
                 patch_bias=True, norm_pre=False, registers=1, pos_prefix=False, ls_init=1.0, head=False), 64)


@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_towers_match(case):
    name, kwargs, vision, embed = TIMM_CASES[case]
    torch.manual_seed(0)
    ref = perturb(timm.create_model(name, pretrained=False, **kwargs).eval())
    _, diff = _compare_timm(ref, _vision_only(vision, embed))
    print(f"timm {case}: image {diff:.2e}")


@pytest.mark.parametrize("case", ["pe_spatial", "pe_lang"])
def test_pe_trunk_features_equal_timm_intermediates(case):
    """`features` of a PE-Spatial / PE-Lang trunk at two layers equal timm's forward_intermediates (the hidden
    states an MLLM reads, class token included), and the registry's trunks build on the meta device."""
    name, kwargs, vision, embed = TIMM_CASES[case]
    torch.manual_seed(0)
    ref = perturb(timm.create_model(name, pretrained=False, **kwargs).eval())
    ours, _ = _compare_timm(ref, _vision_only(vision, embed))
    pixels = _pixels(vision.image_size)
    with torch.no_grad():
        theirs = ref.forward_intermediates(pixels, indices=[0, vision.depth - 2], output_fmt="NLC",
                                           intermediates_only=True, return_prefix_tokens=True)
        mine = ours.visual.features(pixels, layers=(1, vision.depth - 1))
    for layer, (t, m) in enumerate(zip(theirs, mine)):
        t = torch.cat([t[1], t[0]], dim=1) if isinstance(t, tuple) else t  # (patches, prefix) -> prefix first
        assert_close(m, t, f"features of block {layer}")


def test_pe_follows_other_image_sizes_by_its_own_rule():
    """At another size PE resamples its learned positions bilinearly (align_corners=False, perception_models'
    `_sample_abs_posemb`) and rescales the rotary grid to the reference grid: ours at 96 px equals timm's PE built
    for 96 px with the positions resampled that way."""
    name, kwargs, vision, embed = TIMM_CASES["pe_core"]
    torch.manual_seed(0)
    ref = perturb(timm.create_model(name, pretrained=False, **kwargs).eval())
    cfg = _vision_only(vision, embed)
    ours = dualtower.DualEncoder(cfg).eval()
    ours.load_state_dict(timm_vit.import_state_dict(ref.state_dict(), cfg, set(ours.state_dict()), "timm"))
    big = timm.create_model(name, pretrained=False, **dict(kwargs, img_size=96)).eval()
    state = ref.state_dict()
    grid = state["pos_embed"][:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, 36, -1)], dim=1)
    big.load_state_dict(state)
    pixels = _pixels(96)
    with torch.no_grad():
        assert_close(ours.encode_image(pixels, interpolate_pos=True), big(pixels), "image embeddings at 96 px")


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


# ------------------------------------------------------------------------------------- transformers SigLIP


def _siglip_config(**vision_overrides):
    import transformers

    text = dict(vocab_size=500, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, pad_token_id=1, eos_token_id=1, bos_token_id=None)
    vision = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, image_size=48,
                  patch_size=12, **vision_overrides)
    return transformers.SiglipConfig(text_config=text, vision_config=vision)


def _compare_siglip(hf, ours, image_size=48):
    pixels = _pixels(image_size, n=3)
    ids = torch.randint(2, 500, (4, 16), generator=torch.Generator().manual_seed(2))
    ids[:, 10:] = 1  # padded to the context with the pad id, as SigLIP's tokenizer does
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pixels)
        out = ours(pixels, ids)
        return (assert_close(ours.encode_image(pixels), hf.vision_model(pixel_values=pixels).pooler_output, "image"),
                assert_close(ours.encode_text(ids), hf.text_model(input_ids=ids).pooler_output, "text"),
                assert_close(out.logits_per_image, ref.logits_per_image, "logits"))


def test_hf_siglip_loads_and_exports_with_equal_outputs(tmp_path):
    import transformers

    torch.manual_seed(0)
    hf = perturb(transformers.SiglipModel(_siglip_config()).eval())
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    assert ours.cfg.vision.act == "gelu_tanh" and ours.cfg.text.pool == "last" and ours.cfg.tokenizer == "external"
    diffs = _compare_siglip(hf, ours)
    print(f"HF SiglipModel: image {diffs[0]:.2e} text {diffs[1]:.2e} logits {diffs[2]:.2e}")

    # Export: SiglipModel.from_pretrained takes our directory and gives the same outputs.
    convert.convert(tmp_path / "hf", tmp_path / "back", to="hf")
    again = transformers.SiglipModel.from_pretrained(tmp_path / "back").eval()
    _compare_siglip(again, ours)
    assert json_of(tmp_path / "back" / "preprocessor_config.json")["size"] == {"height": 48, "width": 48}


def test_open_clip_siglip_exports_to_hf_siglip(tmp_path):
    """open_clip's timm SigLIP (exact GELU) -> ours -> HF SigLIP directory: one set of weights, three codebases."""
    import transformers

    from dataclasses import replace

    cfg = get_config("ViT-B-16-SigLIP")
    small = dict(width=64, depth=2, heads=4, mlp_dim=128)
    cfg = cfg.replace(embed_dim=64, vision=replace(cfg.vision, image_size=32, **small),
                      text=replace(cfg.text, vocab_size=300, context_length=12, **small),
                      preprocess=replace(cfg.preprocess, image_size=32))
    torch.manual_seed(0)
    ours = dualtower.DualEncoder(cfg).eval()
    ours.init_weights()
    perturb(ours)
    convert.export(ours, tmp_path / "hf", "hf")
    hf = transformers.SiglipModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.vision_config.hidden_act == "gelu"
    pixels = _pixels(32)
    ids = torch.randint(2, 300, (3, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_close(ours(pixels, ids).logits_per_image, hf(input_ids=ids, pixel_values=pixels).logits_per_image,
                     "logits")


def json_of(path):
    import json

    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ InternViT


def _internvl_vision_config(six_b: bool, **overrides):
    import transformers

    args = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=56,
                patch_size=14, layer_norm_eps=1e-6)
    if six_b:
        args.update(norm_type="rms_norm", use_qk_norm=True, attention_bias=False)
    else:
        args.update(norm_type="layer_norm", use_qk_norm=False, attention_bias=True)
    args.update(overrides)
    return transformers.InternVLVisionConfig(**args)


@pytest.mark.parametrize("six_b", [False, True], ids=["300m-style", "6b-style"])
def test_hf_internvl_vision_matches_at_two_sizes(six_b, tmp_path):
    """RMSNorm, full-width QK-norm, no qkv bias (6B) or LayerNorm with qkv bias (300M); layer scale; no final
    norm. Hidden states of every layer, at the config's size and at another (positions resized bicubically)."""
    import transformers

    torch.manual_seed(0)
    hf = perturb(transformers.InternVLVisionModel(_internvl_vision_config(six_b)).eval())
    hf.save_pretrained(tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    v = ours.cfg.vision
    assert ours.text is None and v.qk_norm == ("full" if six_b else "none") and v.norm == ("rmsnorm" if six_b
                                                                                             else "layernorm")
    for size in (56, 84):
        pixels = _pixels(size)
        with torch.no_grad():
            ref = hf(pixel_values=pixels, output_hidden_states=True)
            mine = ours.visual.features(pixels, layers=tuple(range(4)), interpolate_pos=True)
            for i, (a, b) in enumerate(zip(mine, ref.hidden_states)):
                assert_close(a, b, f"hidden state {i} at {size} px")
            diff = assert_close(ours.encode_image(pixels, interpolate_pos=True), ref.last_hidden_state[:, 0], "cls")
        print(f"HF InternVLVisionModel {'6B' if six_b else '300M'} style at {size}px: cls {diff:.2e}")

    # Back to transformers, and to InternVL's own layout and in again.
    convert.convert(tmp_path / "hf", tmp_path / "back", to="hf")
    again = transformers.InternVLVisionModel.from_pretrained(tmp_path / "back").eval()
    convert.convert(tmp_path / "hf", tmp_path / "internvl.safetensors", to="internvl")
    from safetensors.torch import load_file

    own = load_file(tmp_path / "internvl.safetensors")
    assert "encoder.layers.0.attn.qkv.weight" in own and "embeddings.class_embedding" in own
    name = "InternViT-6B-like" if six_b else "InternViT-300M-like"
    from dualtower.convert import internvl

    cfg = ours.cfg.replace(name=name)
    via_own = dualtower.DualEncoder(cfg).eval()
    via_own.load_state_dict(internvl.import_state_dict({"vision_model." + k: t for k, t in own.items()}, cfg,
                                                       set(via_own.state_dict()), "internvl"))
    pixels = _pixels(56)
    with torch.no_grad():
        ref = hf(pixel_values=pixels).last_hidden_state
        assert_close(again(pixel_values=pixels).last_hidden_state, ref, "re-exported")
        assert_close(via_own.visual.features(pixels)[0], ref, "through InternVL's layout")


def test_internvit_registry_configs_build_on_meta():
    """The 6B is not built for real here; on the meta device its parameter count is InternViT-6B's (5.9B)."""
    with torch.device("meta"):
        six = dualtower.DualEncoder(get_config("InternViT-6B-448px"))
        small = dualtower.DualEncoder(get_config("InternViT-300M-448px"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 5.5e9 < count(six) < 6.0e9 and 3.0e8 < count(small) < 3.1e8
    blk = six.visual.transformer.blocks[0]
    assert blk.attn.q_norm.weight.shape == (3200,) and blk.attn.qkv.bias is None and blk.ls1.gamma.shape == (3200,)


# ------------------------------------------------------------------------------------------------ refusals


def test_unmatched_or_missing_keys_are_errors_in_every_new_layout(tmp_path):
    from safetensors.torch import save_file

    from dualtower.checkpoint import CheckpointError

    torch.manual_seed(0)
    ref = open_clip.create_model("EVA02-B-16").eval()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file({**state, "visual.trunk.blocks.0.attn.extra": torch.zeros(1)}, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match="visual.trunk.blocks.0.attn.extra"):
        dualtower.load(tmp_path / "extra.safetensors", arch="EVA02-B-16")
    del state["visual.trunk.blocks.3.mlp.fc1_g.weight"]
    save_file(state, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="missing keys .*blocks.3"):
        dualtower.load(tmp_path / "missing.safetensors", arch="EVA02-B-16")
    with pytest.raises(CheckpointError, match="missing keys"):  # an open_clip CLIP file under a SigLIP name
        save_file({k: v.contiguous() for k, v in open_clip.create_model("ViT-B-32").state_dict().items()},
                  tmp_path / "b32.safetensors")
        dualtower.load(tmp_path / "b32.safetensors", arch="ViT-B-16-SigLIP")


def test_vision_only_and_external_tokenizer_models_say_so():
    with torch.device("meta"):
        intern = dualtower.DualEncoder(get_config("InternViT-300M-448px"))
    with pytest.raises(ValueError, match="vision-only"):
        intern.encode_text(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="vision-only"):
        dualtower.get_tokenizer("InternViT-300M-448px")
    with pytest.raises(ValueError, match="own tokenizer"):
        dualtower.get_tokenizer("ViT-B-16-SigLIP")
    from dualtower.convert.remap import ConversionError

    with pytest.raises(ConversionError, match="open_clip models have a text tower"):
        from dualtower.convert import open_clip as oc

        oc.check_exportable(get_config("InternViT-300M-448px"))


def test_internvl_c_image_head_matches_its_published_computation():
    """InternVL-C's image head (no reference package on PyPI): the tower from transformers' InternVLVisionModel,
    the head recomputed here step by step from InternVL's AttentionPoolingBlock (mean token as the query,
    LayerNorm eps 1e-5 on query/key/value inputs, biased q/k/v, 2 heads unlike the tower's 4, output projection).
    Both come from one checkpoint in InternVL-C's layout (`vision_model.*`, `clip_projector.*`)."""
    import dataclasses

    import torch.nn.functional as F
    import transformers

    from dualtower.convert import internvl

    torch.manual_seed(0)
    tower = perturb(transformers.InternVLVisionModel(_internvl_vision_config(six_b=True)).eval())
    D, E, heads = 64, 24, 2
    g = torch.Generator().manual_seed(5)
    head = {f"clip_projector.norm1_{x}.{w}": (1.0 if w == "weight" else 0.0) + 0.1 * torch.randn(D, generator=g)
            for x in "qkv" for w in ("weight", "bias")}
    for x in "qkv":
        head[f"clip_projector.cross_attn.{x}.weight"] = torch.randn(D, D, generator=g) * D ** -0.5
        head[f"clip_projector.cross_attn.{x}_bias"] = torch.randn(D, generator=g) * 0.1
    head["clip_projector.cross_attn.proj.weight"] = torch.randn(E, D, generator=g) * D ** -0.5
    head["clip_projector.cross_attn.proj.bias"] = torch.randn(E, generator=g) * 0.1
    state = {**{f"vision_model.{k}": v for k, v in tower.state_dict().items()}, **head}

    base = internvl.config_from_hf(tower.config.to_dict(), "tower")
    cfg = base.replace(name="InternVL-C-like", embed_dim=E, vision=dataclasses.replace(
        base.vision, pool="mean_query", pool_heads=heads, head=True, head_bias=True))
    ours = dualtower.DualEncoder(cfg).eval()
    ours.load_state_dict(internvl.import_state_dict(state, cfg, set(ours.state_dict()), "internvl-c"))

    pixels = _pixels(56)
    with torch.no_grad():
        x = tower(pixel_values=pixels).last_hidden_state  # (B, L, D): every token, class token included
        B, L, _ = x.shape

        def ln(t, name):
            return F.layer_norm(t, (D,), head[f"clip_projector.norm1_{name}.weight"],
                                head[f"clip_projector.norm1_{name}.bias"], eps=1e-5)

        def proj(t, name):
            w, b = head[f"clip_projector.cross_attn.{name}.weight"], head[f"clip_projector.cross_attn.{name}_bias"]
            return (t @ w.T + b).reshape(B, t.shape[1], heads, D // heads).permute(0, 2, 1, 3)

        q = proj(ln(x.mean(1, keepdim=True), "q"), "q")
        k, v = proj(ln(x, "k"), "k"), proj(ln(x, "v"), "v")
        attn = ((q * (D // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        pooled = (attn @ v).transpose(1, 2).reshape(B, D)
        want = pooled @ head["clip_projector.cross_attn.proj.weight"].T + head["clip_projector.cross_attn.proj.bias"]
        diff = assert_close(ours.encode_image(pixels), want, "InternVL-C image embeddings")
    print(f"InternVL-C head: image {diff:.2e}")
    back = internvl.export_state_dict(dict(ours.state_dict()), cfg, layout="internvl", prefix="vision_model.")
    assert set(head) <= set(back) and all(torch.equal(back[k], head[k]) for k in head)


def test_internvl_c_registry_config():
    with torch.device("meta"):
        model = dualtower.DualEncoder(get_config("InternVL-C-vision"))
    assert model.visual.pool.heads == 16 and model.visual.head.weight.shape == (768, 3200)
    assert len(model.visual.transformer.blocks) == 48 and model.cfg.vision.image_size == 224
