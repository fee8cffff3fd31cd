"""Loading by name from the Hub, against a stand-in Hub on 127.0.0.1 (tests/hubserver.py) that huggingface_hub
downloads from for real. Each repo is written by its reference's own writer (transformers save_pretrained,
open_clip's save_for_hf, timm's save_for_hf, ours); the load runs in a fresh process with HF_ENDPOINT and
HF_HOME set, as a user's would, and the result's outputs are compared with the reference model's
(max |diff| / max |ref| <= 1e-5, fp32)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import transformers

import dualtower

from .conftest import CAPTIONS, assert_close, save_hf
from .hubserver import Hub
from .test_parity_families import _siglip_config, perturb
from .test_parity_hf import _features, _hf_config, _random_hf

OPEN_CLIP_CFG = {"embed_dim": 40, "quick_gelu": True,
                 "vision_cfg": {"image_size": 48, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16,
                                "ls_init_value": 0.1},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


class _NoTokenizer:
    """open_clip's save_for_hf also writes its tokenizer; the CLIP BPE has nothing to write here."""

    def save_pretrained(self, directory):
        pass


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Reference models and the repo directories their own writers made."""
    root = tmp_path_factory.mktemp("repos")
    made = {}

    hf = _random_hf(_hf_config(), seed=0)
    save_hf(hf, root / "clip")
    torch.save(hf.state_dict(), root / "clip" / "pytorch_model.bin")  # beside the safetensors: never fetched
    made["acme/clip-tiny"] = ("clip", hf)
    hf1 = _random_hf(_hf_config(), seed=1)
    save_hf(hf1, root / "clip-v1")
    made["acme/clip-tiny@v1"] = ("clip", hf1)
    save_hf(hf, root / "clip-sharded", max_shard_size="150KB")
    made["acme/clip-sharded"] = ("clip", hf)

    torch.manual_seed(0)
    sig = perturb(transformers.SiglipModel(_siglip_config()).eval())
    save_hf(sig, root / "siglip")
    import sentencepiece

    from .test_tokenizer_sp import _words

    (root / "corpus.txt").write_text("\n".join(_words()), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"), model_prefix=str(root / "siglip" / "spiece"), vocab_size=500,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (root / "siglip" / "spiece.vocab").unlink()
    made["google-like/siglip-tiny"] = ("siglip", sig)

    (root / "oc-cfg").mkdir()
    (root / "oc-cfg" / "dt-hub-test.json").write_text(json.dumps(OPEN_CLIP_CFG))
    open_clip.add_model_config(root / "oc-cfg")
    torch.manual_seed(0)
    oc = perturb(open_clip.create_model("dt-hub-test", force_preprocess_cfg={
        "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4), "interpolation": "bilinear", "resize_mode": "squash"}))
    from open_clip.push_to_hf_hub import save_for_hf as open_clip_save

    open_clip_save(oc.eval(), _NoTokenizer(), OPEN_CLIP_CFG, str(root / "open_clip"))
    made["laion-like/open-clip-tiny"] = ("open_clip", oc)

    # Perception Encoder as timm/PE-Core-* ships it: open_clip's layout, a timm trunk, PE's preprocessing.
    torch.manual_seed(0)
    pe = perturb(open_clip.create_model("PE-Core-T-16-384", force_preprocess_cfg={
        "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "resize_mode": "squash"}))
    open_clip_save(pe.eval(), _NoTokenizer(), open_clip.get_model_config("PE-Core-T-16-384"), str(root / "pe-core"))
    made["timm-like/PE-Core-T-16-384"] = ("open_clip", pe)

    # MobileCLIP 2 as timm/MobileCLIP2-*-OpenCLIP ships it: a FastViT trunk, pixels in [0, 1], bilinear.
    from .test_mobileclip import perturb_bn

    torch.manual_seed(0)
    mc = perturb_bn(open_clip.create_model("MobileCLIP2-S0", force_preprocess_cfg={
        "mean": (0.0,) * 3, "std": (1.0,) * 3, "interpolation": "bilinear", "resize_mode": "shortest"}))
    open_clip_save(mc.eval(), _NoTokenizer(), open_clip.get_model_config("MobileCLIP2-S0"), str(root / "mobileclip"))
    made["timm-like/MobileCLIP2-S0-OpenCLIP"] = ("open_clip", mc)

    # MetaCLIP 2 as open_clip's repos ship it: the config names its tokenizer repo, which holds the files.
    from .multilingual import make_xlmr_like

    _, vocab = make_xlmr_like(root / "xlmv")
    worldwide = {**OPEN_CLIP_CFG, "quick_gelu": False, "text_cfg": {
        **OPEN_CLIP_CFG["text_cfg"], "hf_tokenizer_name": "facebook-like/xlm-v-tiny", "pool_type": "eos", "eos_id": 2,
        "vocab_size": vocab}}
    (root / "oc-cfg" / "dt-hub-worldwide.json").write_text(json.dumps(worldwide))
    open_clip.add_model_config(root / "oc-cfg")
    torch.manual_seed(0)
    ww = perturb(open_clip.create_model("dt-hub-worldwide"))
    open_clip_save(ww.eval(), _NoTokenizer(), worldwide, str(root / "worldwide"))
    made["timm-like/worldwide-tiny"] = ("worldwide", ww)

    from timm.models._hub import save_for_hf as timm_save

    for repo, name, args in [
        ("timm-like/pe-spatial-tiny", "vit_pe_spatial_tiny_patch16_512", dict(depth=2)),
        ("timm-like/fastvit-mci0", "fastvit_mci0", dict(num_classes=512)),
        ("timm-like/vit-clip-tiny", "vit_base_patch16_clip_224",
         dict(embed_dim=64, depth=2, num_heads=4, img_size=32, num_classes=48)),
        ("timm-like/eva02-tiny", "eva02_base_patch16_clip_224",
         dict(embed_dim=64, depth=2, num_heads=4, img_size=64, num_classes=32))]:
        torch.manual_seed(0)
        model = perturb_bn(timm.create_model(name, pretrained=False, **args)).eval()
        if "clip_224" in name and "eva" not in name:
            with torch.no_grad():
                model.head.bias.zero_()  # timm's CLIP ViTs: the projection with a zero bias
        timm_save(model, str(root / repo), model_args=args, safe_serialization=True)
        made[repo] = ("timm", model)

    ours = dualtower.create_model("tiny", seed=4)
    dualtower.save(ours, root / "ours")
    made["acme/ours-tiny"] = ("ours", ours)

    # InternVL's own repo layout (config.json model_type intern_vit_6b, InternVL's key names). InternVL's code
    # is not on PyPI: the weights are transformers' InternVLVisionModel's, written in InternVL's layout by our
    # converter, whose InternVL layout is tested against InternVL's published computation.
    from .test_parity_families import _internvl_vision_config

    torch.manual_seed(0)
    intern = perturb(transformers.InternVLVisionModel(_internvl_vision_config(six_b=True)).eval())
    intern.save_pretrained(root / "intern-hf")
    dualtower.convert.convert(root / "intern-hf", root / "internvit" / "model.safetensors", to="internvl")
    c = intern.config
    (root / "internvit" / "config.json").write_text(json.dumps({
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": c.hidden_size,
        "image_size": c.image_size[0], "patch_size": c.patch_size[0], "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
        "layer_norm_eps": c.layer_norm_eps, "norm_type": "rms_norm", "qk_normalization": True, "qkv_bias": False,
        "initializer_factor": c.layer_scale_init_value, "hidden_act": "gelu", "use_flash_attn": False}))
    made["OpenGVLab-like/internvit-tiny"] = ("internvit", intern)

    dirs = {"acme/clip-tiny": "clip", "acme/clip-tiny@v1": "clip-v1", "acme/clip-sharded": "clip-sharded",
            "google-like/siglip-tiny": "siglip", "laion-like/open-clip-tiny": "open_clip",
            "timm-like/vit-clip-tiny": "timm-like/vit-clip-tiny", "timm-like/eva02-tiny": "timm-like/eva02-tiny",
            "acme/ours-tiny": "ours", "OpenGVLab-like/internvit-tiny": "internvit",
            "timm-like/PE-Core-T-16-384": "pe-core", "timm-like/pe-spatial-tiny": "timm-like/pe-spatial-tiny",
            "timm-like/worldwide-tiny": "worldwide", "facebook-like/xlm-v-tiny": "xlmv",
            "timm-like/MobileCLIP2-S0-OpenCLIP": "mobileclip", "timm-like/fastvit-mci0": "timm-like/fastvit-mci0"}
    return root, made, dirs


@pytest.fixture()
def hub(refs):
    root, made, dirs = refs
    server = Hub()
    for spec, directory in dirs.items():
        repo, _, revision = spec.partition("@")
        server.add(repo, root / directory, revision or "main")
    server.start()
    yield server
    server.stop()


def _run(specs: dict[str, Path], env: dict) -> dict[str, str]:
    """Convert each hf-hub spec to our format in a fresh process; returns each spec's error ('' on success)."""
    script = textwrap.dedent("""
        import json, sys
        from dualtower.convert import convert
        errors = {}
        for spec, dst in json.loads(sys.argv[1]).items():
            try:
                convert(spec, dst)
                errors[spec] = ""
            except Exception as e:
                errors[spec] = f"{type(e).__name__}: {e}"
        print(json.dumps(errors))
    """)
    out = subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in specs.items()})],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env(hub: Hub, home: Path, offline: bool = False) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1" if offline else "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _pixels(size):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _compare(kind: str, ref, ours) -> float:
    size = ours.cfg.vision.image_size
    pixels = _pixels(size)
    with torch.no_grad():
        if kind == "clip":
            ids = dualtower.get_tokenizer("tiny")(CAPTIONS, context_length=32)
            assert_close(ours.encode_text(ids), _features(ref.get_text_features(input_ids=ids)), "text")
            return assert_close(ours.encode_image(pixels), _features(ref.get_image_features(pixel_values=pixels)),
                                "image")
        if kind == "siglip":
            ids = torch.randint(2, 500, (3, 16), generator=torch.Generator().manual_seed(2))
            assert_close(ours.encode_text(ids), ref.text_model(input_ids=ids).pooler_output, "text")
            return assert_close(ours.encode_image(pixels), ref.vision_model(pixel_values=pixels).pooler_output,
                                "image")
        if kind == "open_clip":
            ids = dualtower.get_tokenizer(ours)(CAPTIONS)
            assert_close(ours.encode_text(ids), ref.encode_text(ids), "text")
            return assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image")
        if kind == "worldwide":  # the tokenizer came from the repo its config names
            ids = dualtower.get_tokenizer(ours)(CAPTIONS)
            assert ids[0, 0] == 0 and (ids == 2).any(dim=1).all()
            assert_close(ours.encode_text(ids), ref.encode_text(ids), "text")
            return assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image")
        if kind == "timm":
            return assert_close(ours.encode_image(pixels), ref(pixels), "image")
        if kind == "internvit":
            return assert_close(ours.encode_image(pixels), ref(pixel_values=pixels).last_hidden_state[:, 0],
                                "image")
        assert torch.equal(ours.encode_image(pixels), ref.encode_image(pixels))
        return 0.0


def test_every_layout_loads_from_the_hub_and_matches_its_reference(refs, hub, tmp_path):
    _, made, dirs = refs
    specs = {f"hf-hub:{spec}": tmp_path / "out" / spec.replace("/", "_").replace("@", "_") for spec in dirs
             if spec in made}
    errors = _run(specs, _env(hub, tmp_path / "hf"))
    assert not any(errors.values()), errors
    for spec, dst in specs.items():
        kind, ref = made[spec[len("hf-hub:"):]]
        diff = _compare(kind, ref, dualtower.load(dst))
        print(f"{spec} ({kind}): image {diff:.2e}")
    served = set(hub.served)
    assert ("acme/clip-tiny", "model.safetensors") in served
    assert ("acme/clip-tiny", "pytorch_model.bin") not in served  # safetensors preferred; the pickle never fetched
    assert ("laion-like/open-clip-tiny", "open_clip_model.safetensors") in served
    assert ("laion-like/open-clip-tiny", "open_clip_pytorch_model.bin") not in served
    assert sum(name.endswith(".safetensors") for repo, name in served if repo == "acme/clip-sharded") > 1
    siglip = dualtower.load(specs["hf-hub:google-like/siglip-tiny"])  # its spiece.model came along
    assert dualtower.get_tokenizer(siglip)(["a photo of a cat"]).shape == (1, 16)
    oc = dualtower.load(specs["hf-hub:laion-like/open-clip-tiny"]).cfg  # preprocess_cfg and model_cfg honoured
    assert (oc.preprocess.mean, oc.preprocess.interpolation, oc.preprocess.resize_mode) == \
        ((0.5, 0.4, 0.3), "bilinear", "squash")
    assert oc.vision.act == "quick_gelu" and oc.vision.ls_init == 0.1 and oc.name == "laion-like/open-clip-tiny"
    pe = dualtower.load(specs["hf-hub:timm-like/PE-Core-T-16-384"]).cfg
    assert (pe.vision.rope_indexing, pe.preprocess.resize_mode, pe.text.context_length) == ("xy", "squash", 32)
    assert dualtower.load(specs["hf-hub:timm-like/pe-spatial-tiny"]).cfg.vision.depth == 2
    mc = dualtower.load(specs["hf-hub:timm-like/MobileCLIP2-S0-OpenCLIP"]).cfg
    assert (mc.vision.kind, mc.preprocess.mean, mc.preprocess.interpolation) == ("fastvit", (0.0,) * 3, "bilinear")
    assert dualtower.load(specs["hf-hub:timm-like/fastvit-mci0"]).cfg.vision.dims == (64, 128, 256, 512)

    # Offline, the Hub gone: the cache serves what was fetched; anything else is a clear error.
    hub.stop()
    again = {"hf-hub:acme/clip-tiny": tmp_path / "again", "hf-hub:acme/never-fetched": tmp_path / "never"}
    errors = _run(again, _env(hub, tmp_path / "hf", offline=True))
    assert errors["hf-hub:acme/clip-tiny"] == ""
    _compare("clip", made["acme/clip-tiny"][1], dualtower.load(tmp_path / "again"))
    message = errors["hf-hub:acme/never-fetched"]
    assert "acme/never-fetched" in message and "config.json" in message and "hf download acme/never-fetched" in message
    # The Hub unreachable without HF_HUB_OFFLINE set: the cache serves it too (one quick look, no retries).
    errors = _run({"hf-hub:acme/clip-tiny": tmp_path / "again2"}, _env(hub, tmp_path / "hf"))
    assert errors["hf-hub:acme/clip-tiny"] == ""


@pytest.mark.parametrize("mode", ["flipped", "truncated"])
def test_a_corrupted_download_is_refused_and_not_cached(refs, hub, tmp_path, mode):
    hub.corrupt[("acme/ours-tiny", "model.safetensors")] = mode
    errors = _run({"hf-hub:acme/ours-tiny": tmp_path / "out"}, _env(hub, tmp_path / "hf"))
    assert errors["hf-hub:acme/ours-tiny"], "a corrupted file was accepted"
    print(f"{mode}: {errors['hf-hub:acme/ours-tiny'][:300]}")
    assert not (tmp_path / "out").exists()
    repo_cache = tmp_path / "hf" / "hub" / "models--acme--ours-tiny"
    blobs = [p for p in (repo_cache / "blobs").iterdir() if not p.name.endswith(".incomplete")]
    weights = [p for p in (repo_cache / "snapshots").rglob("model.safetensors")]
    assert weights == [] and all(p.stat().st_size < 10_000 for p in blobs)  # only the small config remains
    # Served whole again, the same cache completes the download.
    hub.corrupt.clear()
    assert _run({"hf-hub:acme/ours-tiny": tmp_path / "out"}, _env(hub, tmp_path / "hf")) == \
        {"hf-hub:acme/ours-tiny": ""}


def test_names_resolve_without_the_network():
    from dualtower import hub

    assert hub.parse("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K@abc123") == \
        ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "abc123", None)
    assert hub.parse("ViT-B-32/openai") == ("openai/clip-vit-base-patch32", None, "hf-clip")
    with pytest.raises(ValueError, match="hf-hub:ORG/NAME"):
        hub.parse("hf-hub:no-slash")
    for known in hub.KNOWN.values():  # every short name names an architecture and a format we have
        dualtower.get_config(known.arch)
        dualtower.convert.get_format(known.layout)
        assert known.arch not in dualtower.list_architectures() or known.name != known.arch


def test_models_command_lists_the_known_names(capsys):
    from dualtower.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-32/openai" in out and "openai/clip-vit-base-patch32" in out and "hf-clip" in out
    for name in ("PE-Core-L-14-336/meta", "PE-Spatial-B-16-512/meta",
                 "ViT-H-14-worldwide-quickgelu/metaclip2_worldwide", "xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k",
                 "nllb-clip-base/v1", "AIMv2-L-14-224/apple_pt"):
        assert name in out, name


def test_oversized_side_files_are_refused_before_download_and_revisions_are_names(refs, hub, tmp_path):
    """A repo whose README.md or tokenizer.json is far larger than any model's is refused naming the file, before
    a byte of it is downloaded; a revision is a branch, tag or commit name, never a path."""
    import shutil

    root, _, _ = refs
    for name, size in (("README.md", 2 << 20), ("tokenizer.json", dualtower.hub.FILE_LIMITS["tokenizer"] + (1 << 20))):
        folder = tmp_path / f"repo-{name}"
        shutil.copytree(root / "ours", folder)
        (folder / name).write_bytes(b"x" * size)
        hub.add(f"acme/huge-{name.split('.')[0].lower()}", folder)
    for repo, name in (("acme/huge-readme", "README.md"), ("acme/huge-tokenizer", "tokenizer.json")):
        errors = _run({f"hf-hub:{repo}": tmp_path / "out"}, _env(hub, tmp_path / "hf"))
        assert f"{name} is " in errors[f"hf-hub:{repo}"] and "not downloaded" in errors[f"hf-hub:{repo}"], errors
        assert (repo, name) not in hub.served
    from dualtower.hub import parse

    for revision in ("../../etc", "main/../x", "/abs", "a//b"):
        with pytest.raises(ValueError, match="is not a branch, tag or commit name"):
            parse(f"hf-hub:acme/clip-tiny@{revision}")
    assert parse("hf-hub:acme/clip-tiny@refs/pr/1") == ("acme/clip-tiny", "refs/pr/1", None)
