"""Parity with open_clip on the same random weights: image embeddings, text embeddings, logits."""

import open_clip
import pytest
import torch

import dualtower
from dualtower import convert
from dualtower.archs import OPENCLIP_NAMES, OPENCLIP_TIMM_NAMES, get_config

from .conftest import CAPTIONS, assert_close


def _open_clip_kwargs(cfg):
    """open_clip.CLIP constructor arguments for one of our configs (pre-norm LayerNorm ones)."""
    v, t = cfg.vision, cfg.text
    assert v.act == t.act
    vision = dict(image_size=v.image_size, layers=v.depth, width=v.width, head_width=v.width // v.heads,
                  mlp_ratio=v.mlp_dim / v.width, patch_size=v.patch_size, ls_init_value=v.ls_init or None,
                  pool_type="tok" if v.pool == "cls" else "avg", final_ln_after_pool=v.final_norm == "after_pool")
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                layers=t.depth, mlp_ratio=t.mlp_dim / t.width)
    return dict(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=v.act == "quick_gelu")


def _compare(ref, ours, image_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(3, 3, image_size, image_size, generator=g)
    ids = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(pixels), ref.encode_text(ids)
        img, txt = ours.encode_image(pixels), ours.encode_text(ids)
        ref_logits = ref.logit_scale.exp() * ref.encode_image(pixels, normalize=True) @ \
            ref.encode_text(ids, normalize=True).T
        logits = ours(pixels, ids).logits_per_image
    return (assert_close(img, ref_img, "image embeddings"), assert_close(txt, ref_txt, "text embeddings"),
            assert_close(logits, ref_logits, "logits"))


def _roundtrip(ref, name, tmp_path):
    path = tmp_path / "open_clip_model.bin"
    torch.save(ref.state_dict(), path)
    try:
        return dualtower.load(path, arch=name)
    finally:
        path.unlink()  # full-size files add up to many GB across runs


@pytest.mark.parametrize("name", ["tiny", "tiny-quickgelu", "tiny-ls-mean"])
def test_tiny_configs_match_open_clip(name, tmp_path):
    cfg = get_config(name)
    torch.manual_seed(1)
    ref = open_clip.CLIP(**_open_clip_kwargs(cfg)).eval()
    with torch.no_grad():  # layer scale and the norms start at constants; perturb them so they are tested
        for k, p in ref.named_parameters():
            if "ls_" in k or "ln" in k:
                p.add_(torch.randn_like(p) * 0.1)
    ours = _roundtrip(ref, name, tmp_path)
    _compare(ref, ours, cfg.vision.image_size)


# QuickGELU; layer scale; non-224 inputs; vision and text widths differ; plus the ViT-B/32 baseline.
FAST = ["ViT-B-32", "ViT-B-32-quickgelu", "ViT-M-16-alt", "ViT-B-32-256", "ViT-S-32-alt"]
SLOW = ["ViT-B-16-plus-240", "ViT-L-14-336", "ViT-H-14"]


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_registry_configs_match_open_clip(name, tmp_path, record_property):
    torch.manual_seed(0)
    ref = open_clip.create_model(name).eval()
    ours = _roundtrip(ref, name, tmp_path)
    diffs = _compare(ref, ours, get_config(name).vision.image_size)
    record_property("max_rel_diff", diffs)
    print(f"{name}: image {diffs[0]:.2e} text {diffs[1]:.2e} logits {diffs[2]:.2e}")


@pytest.mark.parametrize("name", sorted(OPENCLIP_NAMES + OPENCLIP_TIMM_NAMES))
def test_every_registry_config_has_open_clip_keys_and_shapes(name, monkeypatch):
    """Built on the meta device (no memory, no compute): our export has exactly open_clip's keys and shapes.
    open_clip reads a transformers text encoder's config from the Hub: it gets the fields our table gives it."""
    from dualtower.archs import ARCHS

    text, extra = get_config(name).text, {}
    if ARCHS[name].hf_text is not None:
        extra = {"pretrained_hf": False}
        import transformers

        hf = transformers.AutoConfig.for_model(text.model_type, **text.fields)
        monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(lambda cls, *a, **k: hf))
    with torch.device("meta"):
        ref = open_clip.create_model(name, device="meta", **extra)
        ours = dualtower.DualEncoder(get_config(name))
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    exported = convert.open_clip.export_state_dict(dict(ours.state_dict()), ours.cfg)
    assert {k: tuple(v.shape) for k, v in exported.items()} == ref_shapes


def test_export_loads_into_open_clip_strictly(tmp_path):
    name = "ViT-S-32-alt"
    ours = dualtower.create_model(name, seed=3)
    for suffix in (".safetensors", ".bin"):
        path = tmp_path / f"exported{suffix}"
        convert.export(ours, path, "open_clip")
        ref = open_clip.create_model(name).eval()
        state = convert.read_state_file(path)
        ref.load_state_dict(state, strict=True)
        _compare(ref, ours, 224)


def test_training_checkpoint_with_ddp_prefix_loads(tmp_path):
    torch.manual_seed(0)
    ref = open_clip.CLIP(**_open_clip_kwargs(get_config("tiny"))).eval()
    state = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    torch.save(state, tmp_path / "epoch_3.pt")
    ours = dualtower.load(tmp_path / "epoch_3.pt", arch="tiny")
    _compare(ref, ours, 32)
