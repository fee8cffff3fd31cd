"""The format registry: detection in one place, bare timm trunks and other tower-only files through the public
`dualtower.load`, vision-only loads, open_clip's CustomTextCLIP layout of a plain ViT, and the errors.
Parity tolerance as everywhere: max |diff| relative to max |reference| <= 1e-5 (fp32)."""

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

import dualtower
from dualtower import convert
from dualtower.checkpoint import CheckpointError

from .conftest import CAPTIONS, assert_close, save_hf
from .test_parity_families import perturb


def _pixels(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _save(state: dict, path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, path)


# The trunks of open_clip's ViT-B-16, EVA02-B-16 and ViT-B-16-SigLIP, as timm publishes them on their own.
TIMM_TRUNKS = {
    "ViT-B-16": ("vit_base_patch16_clip_224", dict(num_classes=512)),
    "EVA02-B-16": ("eva02_base_patch16_clip_224", {}),
    "ViT-B-16-SigLIP": ("vit_base_patch16_siglip_224", {}),
}


@pytest.mark.parametrize("arch", sorted(TIMM_TRUNKS))
def test_bare_timm_trunk_loads_through_the_public_api(arch, tmp_path):
    name, kwargs = TIMM_TRUNKS[arch]
    torch.manual_seed(0)
    ref = perturb(timm.create_model(name, pretrained=False, **kwargs).eval())
    if arch == "ViT-B-16":
        with torch.no_grad():  # timm's CLIP ViTs carry the projection as a head with a zero bias
            ref.head.bias.zero_()
    _save(ref.state_dict(), tmp_path / "model.safetensors")
    ours = dualtower.load(tmp_path / "model.safetensors", arch=arch)
    assert ours.text is None and ours.cfg.text is None  # a trunk-only format loads the vision tower alone
    assert convert.detect(convert.Probe.of(tmp_path / "model.safetensors")).name == "timm"
    pixels = _pixels(224)
    with torch.no_grad():
        diff = assert_close(ours.encode_image(pixels), ref(pixels), f"{arch} from timm's {name}")
    print(f"timm {name} as {arch}: image {diff:.2e}")
    # Written back, the file is timm's again, key for key.
    convert.export(ours, tmp_path / "back.safetensors", "timm")
    back = convert.read_state_file(tmp_path / "back.safetensors")
    assert set(back) == set(ref.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())


def test_a_nonzero_timm_head_bias_is_refused_for_a_bias_free_projection(tmp_path):
    ref = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=512)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["head.bias"] = torch.full((512,), 0.5)
    _save(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="head.bias is not zero"):
        dualtower.load(tmp_path / "model.safetensors", arch="ViT-B-16")
    with pytest.raises(CheckpointError, match="holds no text tower"):
        dualtower.load(tmp_path / "model.safetensors", arch="ViT-B-16", towers="both")


def test_open_clip_custom_text_layout_of_a_plain_vit(tmp_path):
    """open_clip's CustomTextCLIP (text tower under `text.`) around its own VisionTransformer."""
    torch.manual_seed(0)
    ref = perturb(open_clip.create_model("ViT-B-32", force_custom_text=True).eval())
    assert "text.token_embedding.weight" in ref.state_dict()
    _save(ref.state_dict(), tmp_path / "custom.safetensors")
    ours = dualtower.load(tmp_path / "custom.safetensors", arch="ViT-B-32")
    pixels, ids = _pixels(224), dualtower.get_tokenizer(ours)(CAPTIONS[:4])
    with torch.no_grad():
        assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image embeddings")
        assert_close(ours.encode_text(ids), ref.encode_text(ids), "text embeddings")


def test_vision_only_load_of_a_whole_checkpoint(tmp_path):
    model = dualtower.create_model("tiny", seed=2)
    convert.export(model, tmp_path / "oc.safetensors", "open_clip")
    vision = dualtower.load(tmp_path / "oc.safetensors", arch="tiny", towers="vision")
    assert vision.text is None and vision.logit_scale is None
    pixels = _pixels(32)
    with torch.no_grad():
        assert torch.equal(vision.encode_image(pixels), model.encode_image(pixels))
    dualtower.save(model, tmp_path / "ours")
    assert dualtower.load(tmp_path / "ours", towers="vision").text is None
    assert dualtower.load(tmp_path / "ours", towers="text").visual is None  # a text-only model (issue 18)
    with pytest.raises(ValueError, match="towers="):
        dualtower.load(tmp_path / "ours", towers="image")


def test_detection_names_the_candidates_and_source_decides(tmp_path):
    model = dualtower.create_model("tiny", seed=2)
    convert.export(model, tmp_path / "oc.safetensors", "open_clip")
    state = convert.read_state_file(tmp_path / "oc.safetensors")
    # Keys of two formats at once: the error lists both, and source= settles it.
    _save({**state, "patch_embed.proj.weight": torch.zeros(1), "blocks.0.norm1.weight": torch.zeros(1)},
          tmp_path / "both.safetensors")
    with pytest.raises(CheckpointError, match=r"several formats \(open_clip, timm\)"):
        dualtower.load(tmp_path / "both.safetensors", arch="tiny")
    with pytest.raises(CheckpointError, match="patch_embed.proj.weight"):  # open_clip's table: an unmatched key
        dualtower.load(tmp_path / "both.safetensors", arch="tiny", source="open_clip")
    # Keys of none: the error lists every known format.
    _save({"something.else": torch.zeros(1)}, tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="no known format.*open_clip.*timm"):
        dualtower.load(tmp_path / "none.safetensors", arch="tiny")
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        dualtower.load(tmp_path / "oc.safetensors", arch="tiny", source="onnx")
    # The OpenAI alias reads open_clip's layout.
    again = dualtower.load(tmp_path / "oc.safetensors", arch="tiny", source="openai")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_every_format_answers_the_same_interface():
    assert convert.names() == sorted(["dualtower", "open_clip", "openai", "open_clip_hub", "timm", "timm_hub",
                                      "internvl", "hf-clip", "hf-metaclip2", "hf-siglip", "hf-siglip2", "hf-internvl"])
    cfg = dualtower.get_config("tiny")
    for name, fmt in convert.FORMATS.items():
        assert fmt.name == name and fmt.summary
        reason = fmt.can_write(cfg)
        assert reason is None or isinstance(reason, str)
    assert convert.get_format("hf-clip").can_write(cfg) is None
    assert "vision-only" in convert.get_format("internvl").can_write(cfg)
    with pytest.raises(CheckpointError, match="cannot be written as hf"):
        convert.export(dualtower.create_model("tiny-post-rms"), "/nonexistent/x", "hf")


def test_timm_hub_preprocessing_equals_timms_eval_transform(photos):
    """timm's hub layout carries timm's eval transform (crop_pct 0.9 for its CLIP towers: resize to
    floor(224 / 0.9), center crop 224); ours from that config equals timm's own on real photos."""
    from timm.data import create_transform, resolve_data_config

    from dualtower.convert.timm.hub import config_from_timm

    model = timm.create_model("vit_base_patch16_clip_224.openai", pretrained=False, num_classes=512)
    data = {"architecture": "vit_base_patch16_clip_224", "num_classes": 512,
            "pretrained_cfg": dict(model.pretrained_cfg)}
    cfg = config_from_timm(data, "timm-hub")
    assert cfg.preprocess.crop_pct == model.pretrained_cfg["crop_pct"] == 0.9
    ours, theirs = dualtower.get_transform(cfg), create_transform(**resolve_data_config({}, model=model))
    for name, image in photos.items():
        image = image.convert("RGB")
        assert_close(ours(image), theirs(image), f"{name} pixels", rtol=1e-6)


@pytest.mark.parametrize("cls", ["CLIPVisionModelWithProjection", "CLIPVisionModel"])
def test_hf_clip_vision_tower_directories(cls, tmp_path):
    import transformers

    from .test_parity_hf import _hf_config

    config = _hf_config().vision_config
    config.projection_dim = 40
    torch.manual_seed(0)
    hf = perturb(getattr(transformers, cls)(config).eval())
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    assert ours.text is None and ours.cfg.vision.head == (cls == "CLIPVisionModelWithProjection")
    pixels = _pixels(60)
    with torch.no_grad():
        out = hf(pixel_values=pixels)
        want = out.image_embeds if cls == "CLIPVisionModelWithProjection" else out.pooler_output
        assert_close(ours.encode_image(pixels), want, f"{cls} image embeddings")


def test_hf_clip_text_tower_alone_loads_as_a_text_only_model(tmp_path):
    """It was refused by name; issue 18 asked for it (outputs: tests/test_edges.py)."""
    import transformers

    from .test_parity_hf import _hf_config

    transformers.CLIPTextModel(_hf_config().text_config).save_pretrained(tmp_path / "hf")
    model = dualtower.load(tmp_path / "hf")
    assert model.visual is None and model.cfg.text.head is False
    with pytest.raises(CheckpointError, match="no vision tower"):
        dualtower.load(tmp_path / "hf", towers="vision")


def test_the_command_line_help_names_every_format():
    """The torch-free catalog the help reads (dualtower.formats) names exactly the registered formats."""
    from dualtower.cli import build_parser
    from dualtower.formats import DETECTED_ONLY, FORMATS, listing

    named = {n.split(" ")[0] for n in listing().split(", ")}
    assert named == set(FORMATS)
    assert named == set(convert.names()) - set(DETECTED_ONLY), named ^ (set(convert.names()) - set(DETECTED_ONLY))
    assert set(DETECTED_ONLY) <= set(convert.names())
    convert_help = next(a for a in build_parser()._subparsers._group_actions[0].choices["convert"]._actions
                        if a.dest == "to").help
    assert listing() in convert_help


def test_openai_layout_is_written_only_for_quickgelu_towers(tmp_path, capsys):
    """OpenAI's clip.load builds every tower with QuickGELU from the state dict alone: a GELU model written as
    openai loaded silently as another model (issue 33, item 6). It is refused, naming the QuickGELU architecture;
    a QuickGELU model is written and reads back the same."""
    from dualtower.cli import main

    dualtower.save(dualtower.create_model("tiny", seed=1), tmp_path / "gelu")
    assert main(["convert", str(tmp_path / "gelu"), str(tmp_path / "gelu.safetensors"), "--to", "openai"]) == 2
    err = capsys.readouterr().err
    assert "QuickGELU" in err and "tiny-quickgelu" in err and not (tmp_path / "gelu.safetensors").exists(), err
    model = dualtower.create_model("tiny-quickgelu", seed=1)
    dualtower.save(model, tmp_path / "quick")
    assert main(["convert", str(tmp_path / "quick"), str(tmp_path / "quick.safetensors"), "--to", "openai"]) == 0
    back = dualtower.load(tmp_path / "quick.safetensors", arch="tiny-quickgelu", source="openai")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
