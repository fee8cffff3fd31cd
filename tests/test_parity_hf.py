"""Parity with HF transformers' CLIPModel on random weights, both directions."""

import json

import numpy as np
import pytest
import torch
import transformers

import dualtower
from dualtower import convert
from dualtower.checkpoint import CheckpointError

from .conftest import CAPTIONS, assert_close, save_hf

CONTEXT = 32


def _features(out):
    """transformers 4 returns the projected features; 5 returns an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hf_config(**text_overrides):
    # An odd image size (60, patch 12), GELU instead of QuickGELU, projection dim unlike either width.
    text = dict(vocab_size=49408, hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=CONTEXT, hidden_act="gelu", eos_token_id=49407, bos_token_id=49406)
    text.update(text_overrides)
    vision = dict(hidden_size=64, intermediate_size=120, num_hidden_layers=3, num_attention_heads=4, image_size=60,
                  patch_size=12, hidden_act="gelu")
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=40)


def _random_hf(config, seed=0):
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # move the norms and biases off their constant init so they are tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _compare(hf, ours, image_size=60):
    pixels = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    ids = dualtower.get_tokenizer("tiny")(CAPTIONS, context_length=CONTEXT)
    with torch.no_grad():
        ref_img = _features(hf.get_image_features(pixel_values=pixels))
        ref_txt = _features(hf.get_text_features(input_ids=ids))
        ref_logits = hf(input_ids=ids, pixel_values=pixels).logits_per_image
        out = ours(pixels, ids)
        return (assert_close(ours.encode_image(pixels), ref_img, "image embeddings"),
                assert_close(ours.encode_text(ids), ref_txt, "text embeddings"),
                assert_close(out.logits_per_image, ref_logits, "logits"))


@pytest.mark.parametrize("act", ["gelu", "quick_gelu", "gelu_pytorch_tanh"])
def test_hf_directory_loads_with_equal_outputs(tmp_path, act):
    config = _hf_config(hidden_act=act)
    config.vision_config.hidden_act = act
    hf = _random_hf(config)
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    assert ours.cfg.vision.image_size == 60 and ours.cfg.embed_dim == 40
    print(act, _compare(hf, ours))


def test_legacy_eos_token_id_pools_at_end_of_text(tmp_path):
    hf = _random_hf(_hf_config(eos_token_id=2))
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    assert ours.cfg.text.pool == "argmax"  # transformers' rule for eos_token_id 2 (with CLIP's ids: the end token)
    _compare(hf, ours)


def test_export_to_hf_then_from_pretrained(tmp_path):
    hf = _random_hf(_hf_config())
    save_hf(hf, tmp_path / "hf")
    ours = dualtower.load(tmp_path / "hf")
    with torch.no_grad():
        for p in ours.parameters():  # new weights, so the exported copy cannot pass by being the original
            p.add_(torch.randn_like(p) * 0.01)
    convert.export(ours, tmp_path / "exported", "hf")
    reloaded = transformers.CLIPModel.from_pretrained(tmp_path / "exported").eval()
    _compare(reloaded, ours)


def test_registry_model_exports_to_hf(tmp_path):
    ours = dualtower.create_model("tiny", seed=0)  # open_clip layout: norm before pooling the class token
    convert.export(ours, tmp_path / "exported", "hf")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "exported").eval()
    _compare(hf, ours, image_size=32)
    tok = transformers.CLIPTokenizer.from_pretrained(tmp_path / "exported")
    ids = tok(["a photo of a cat"]).input_ids[0]
    assert ids == dualtower.get_tokenizer("tiny")(["a photo of a cat"])[0, :len(ids)].tolist()
    processor = json.loads((tmp_path / "exported" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32}


def test_unsupported_config_is_refused_for_hf(tmp_path):
    ours = dualtower.create_model("tiny-ls-mean", seed=0)
    with pytest.raises(ValueError, match="HF CLIP"):
        convert.export(ours, tmp_path / "out", "hf")
    assert not (tmp_path / "out").exists()


def test_unmatched_hf_key_is_named(tmp_path):
    hf = _random_hf(_hf_config())
    save_hf(hf, tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "hf" / "model.safetensors")
    state["vision_model.extra_head.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(CheckpointError, match="vision_model.extra_head.weight"):
        dualtower.load(tmp_path / "hf")


def test_exported_tokenizer_files_match_ours_on_plain_text_and_our_loader_keeps_ours(tmp_path):
    """transformers' CLIPTokenizer, from our export's vocab.json/merges.txt, gives our ids on ordinary text
    (up to the end token; it pads with the end token where we pad with 0, which pooling at the first end token
    ignores). It does not repair mojibake, unescape HTML or map special-token spellings as OpenAI's CLIP
    preprocessing does (README), so loading that directory back keeps our tokenizer."""
    ours = dualtower.create_model("tiny", seed=0)
    convert.export(ours, tmp_path / "hf", "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours_tok = dualtower.get_tokenizer(ours)

    def upto_end(ids):
        ids = list(ids)
        return ids[: ids.index(49407) + 1]

    plain = CAPTIONS[:5] + ["Two dogs, three cats; one bird!", "東京の夜景 at night", "ÉCOLE élève"]
    assert [upto_end(r) for r in ours_tok(plain).tolist()] == [upto_end(r) for r in hf_tok(plain)["input_ids"]]
    repaired = ["fish &amp; chips", "cafÃ© au lait"]  # ours: "fish & chips", "café au lait"
    assert [upto_end(r) for r in ours_tok(repaired).tolist()] != [upto_end(r) for r in hf_tok(repaired)["input_ids"]]
    assert dualtower.load(tmp_path / "hf").cfg.tokenizer == "clip-bpe"
    # Issue 33, item 8: the export carries a fast tokenizer.json (and special_tokens_map.json), which the
    # tokenizers library runs alone, and which transformers' fast tokenizer reads as its own conversion.
    import tokenizers

    assert {"tokenizer.json", "special_tokens_map.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    fast = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    assert [upto_end(r) for r in ours_tok(plain).tolist()] == [e.ids for e in fast.encode_batch(plain)]
    (tmp_path / "slow").mkdir()  # the same vocabulary without tokenizer.json: transformers converts it itself
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / "slow" / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    converted = transformers.AutoTokenizer.from_pretrained(tmp_path / "slow")
    assert [hf_tok(t)["input_ids"] for t in plain] == [converted(t)["input_ids"] for t in plain]


def test_the_vision_tower_alone_is_written_for_transformers_vision_models_and_pipelines(tmp_path, photos):
    """Issue 33, item 7: `convert --towers vision --to hf` writes a CLIPVisionModelWithProjection directory, which
    transformers loads with no missing or unexpected key, whose image embeddings equal ours, and which
    pipeline("image-feature-extraction") (it fails on a full CLIPModel: "You have to specify input_ids") runs:
    its features equal our tower's last hidden states."""
    from dualtower.cli import main

    save_hf(_random_hf(_hf_config()), tmp_path / "full")
    assert main(["convert", str(tmp_path / "full"), str(tmp_path / "vision"), "--towers", "vision", "--to", "hf"]) == 0
    config = json.loads((tmp_path / "vision" / "config.json").read_text())
    assert config["model_type"] == "clip_vision_model" and config["architectures"] == ["CLIPVisionModelWithProjection"]
    ours = dualtower.load(tmp_path / "full", towers="vision")
    theirs, info = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "vision",
                                                                             output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "vision")
    images = [im.convert("RGB") for im in photos.values()][:3]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert_close(ours.encode_image(pixels), theirs.eval()(pixel_values=pixels).image_embeds, "image embeds")
        hidden = ours.visual.features(pixels, layers=(-1,))[0]  # (B, L, D): the last block, before the final norm
    extractor = transformers.pipeline("image-feature-extraction", model=str(tmp_path / "vision"), device="cpu")
    for image, want in zip(images, hidden):
        got = torch.tensor(extractor(image))[0]
        assert got.shape == want.shape
        assert_close(got, want, "pipeline features")
    again = dualtower.load(tmp_path / "vision")  # and it reads back as the same tower
    with torch.no_grad():
        assert torch.equal(again.encode_image(pixels), ours.encode_image(pixels))


def test_an_hf_export_says_how_its_preprocessing_changes_and_by_how_much(trained_digits, photos, tmp_path, capsys):
    """Issue 33, item 5: `convert --to hf` of an open_clip-rule model gave transformers' pipeline other
    probabilities than `dualtower classify` on the original, without a word. transformers' CLIPImageProcessor
    cannot express open_clip's crop rounding nor its RGB rule, so the command says what changes; measured here on
    real photos (and their RGBA / grayscale-with-alpha forms) through the same weights: the original's rules
    against the export's."""
    from dualtower.cli import main
    from dualtower.eval.classifier import ZeroShotClassifier

    assert main(["convert", str(trained_digits), str(tmp_path / "hf"), "--to", "hf"]) == 0
    err = capsys.readouterr().err
    assert "note: transformers' image processor will prepare images unlike this model" in err
    assert "flattened onto white" in err and "(W - S) // 2" in err
    original, exported = dualtower.load(trained_digits), dualtower.load(tmp_path / "hf")
    assert exported.cfg.preprocess.rgb == "white_first" and exported.cfg.preprocess.center_crop == "floor"
    images = []
    for image in photos.values():
        rgba = image.convert("RGBA")
        rgba.putalpha(128)
        images += [image, rgba, image.convert("LA")]
    labels = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    template = ["a photo of the number {c}."]
    a = ZeroShotClassifier(original, labels, template)
    b = ZeroShotClassifier(exported, labels, template)
    cosine = (a.embedder.embed_images(images) * b.embedder.embed_images(images)).sum(1)
    moved = np.abs(a.probs(images) - b.probs(images)).max(1)
    with capsys.disabled():  # the measured sizes (README, "Files other people made")
        for kind, rows in (("as they are", slice(0, None, 3)), ("RGBA, half transparent", slice(1, None, 3)),
                           ("grayscale with alpha", slice(2, None, 3))):
            print(f"\nHF export preprocessing, {len(images[rows])} photos {kind}: cosine min {cosine[rows].min():.4f}"
                  f" median {np.median(cosine[rows]):.4f}; zero-shot probability moved up to {moved[rows].max():.4f}"
                  f" (median {np.median(moved[rows]):.4f})")
    assert cosine.min() < 0.999 and moved.max() > 1e-3  # a real change, which the note is right to announce
    # The same weights and rules (our own format) change nothing.
    assert main(["convert", str(trained_digits), str(tmp_path / "ours"), "--to", "dualtower"]) == 0
    assert "note:" not in capsys.readouterr().err
