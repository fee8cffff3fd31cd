"""Multilingual text towers: open_clip's xlm-roberta-*, nllb-clip-* and mt5-* configs (its HFTextEncoder around a
transformers encoder). open_clip fetches the encoder's config from the Hub; here it gets a small hand-made config
of the same kind (AutoConfig.from_pretrained answered locally), and ours is built from the same fields. Same
random weights; fp32; max |diff| relative to max |reference| <= 1e-5."""


import open_clip
import pytest
import torch
import transformers

import dualtower
from dualtower.archs import get_config
from dualtower.families import hf_text
from dualtower.errors import UserError
from dualtower.convert.open_clip import tables as oc_tables
from dualtower.tokenizers.hf_json import JsonTokenizer

from .conftest import assert_close
from .multilingual import make_mt5_like, make_xlmr_like, texts
from .test_parity_families import perturb

# per kind: an open_clip config, a small encoder of its kind, the tokenizer kind its repos ship
SMALL = {
    "xlm-roberta": ("xlm-roberta-base-ViT-B-32", "xlm-roberta-base", make_xlmr_like,
                    dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                         max_position_embeddings=80)),
    "m2m_100": ("nllb-clip-base", "facebook/nllb-200-distilled-600M", make_xlmr_like,
                dict(d_model=48, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=80)),
    "m2m_100-siglip": ("nllb-clip-base-siglip", "facebook/nllb-200-distilled-600M", make_xlmr_like,
                       dict(d_model=48, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96,
                            max_position_embeddings=80)),
    "mt5": ("mt5-base-ViT-B-32", "google/mt5-base", make_mt5_like,
            dict(d_model=48, d_kv=12, d_ff=96, num_layers=2, num_decoder_layers=1, num_heads=4)),
}


def small_pair(kind, tmp_path, monkeypatch):
    """open_clip's model of `kind`'s config with a small encoder, and our config for it; with the tokenizer."""
    name, hub_name, make_tokenizer, fields = SMALL[kind]
    _, vocab = make_tokenizer(tmp_path / "tok")
    arch = get_config(name)
    small = hf_text(hub_name, arch.text.pool, arch.text.proj, vocab_size=vocab, **fields)
    reference_config = transformers.AutoConfig.for_model(small.model_type, **small.fields)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(lambda cls, *a, **k: reference_config))
    torch.manual_seed(0)
    ref = perturb(open_clip.create_model(name, pretrained_hf=False).eval())
    return ref, arch.replace(text=small), tmp_path / "tok"


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_open_clip_hf_text_towers_match_and_export_back(kind, tmp_path, monkeypatch):
    ref, cfg, tok = small_pair(kind, tmp_path, monkeypatch)
    ours = dualtower.DualEncoder(cfg).eval()
    ours.load_state_dict(oc_tables.import_state_dict(ref.state_dict(), cfg, set(ours.state_dict()), "open_clip"))
    tokenizer = JsonTokenizer.from_directory(tok, 77, "whitespace")
    ids = tokenizer(texts(24, seed=5))
    assert (ids == cfg.text.pad_id).any(), "some rows are padded, so the mask is tested"
    size = cfg.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = assert_close(ours.encode_text(ids), ref.encode_text(ids), "text embeddings")
        image = assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image embeddings")
        ref_logits = ref.logit_scale.exp() * ref.encode_image(pixels, normalize=True) @ \
            ref.encode_text(ids, normalize=True).T
        if getattr(ref, "logit_bias", None) is not None:  # nllb-clip-*-siglip
            ref_logits = ref_logits + ref.logit_bias
        assert_close(ours(pixels, ids).logits_per_image, ref_logits, "logits")
    print(f"{kind}: text {text:.2e} image {image:.2e}")

    out = tmp_path / "exported.safetensors"
    dualtower.convert.export(ours, out, "open_clip")
    from safetensors.torch import load_file

    again = open_clip.create_model(SMALL[kind][0], pretrained_hf=False).eval()
    again.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        assert_close(ours.encode_text(ids), again.encode_text(ids), "text embeddings after export")


def test_tokenizer_ids_equal_transformers_and_open_clip_for_each_kind(tmp_path):
    """2,000 strings in many scripts, each kind read from the files its repos ship: ids equal transformers'
    AutoTokenizer (padding="max_length", truncation, context 77) and open_clip's HFTokenizer (clean
    "whitespace", its multilingual configs' default). NLLB's language tag is the tokenizer's `language`, as
    transformers' src_lang (default eng_Latn). (open_clip 3.3's HFTokenizer(language=...) has no effect under
    transformers 5, which resets the tag on every call: its ids are eng_Latn's; the no-language case is compared.)"""
    from open_clip.tokenizer import HFTokenizer

    from .multilingual import make_nllb_like

    strings = texts(2000)
    agree = {}
    for kind, make in (("xlm-r", make_xlmr_like), ("mt5", make_mt5_like), ("nllb", make_nllb_like)):
        folder = tmp_path / kind
        make(folder)
        languages = (None, "fra_Latn", "rus_Cyrl") if kind == "nllb" else (None,)
        for language in languages:
            reference = transformers.AutoTokenizer.from_pretrained(folder, **({"src_lang": language} if language
                                                                              else {}))
            expected = reference(strings, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            ours = JsonTokenizer.from_directory(folder, 77, "none", language=language)(strings)
            agree[(kind, language or "default")] = int((ours == expected).all(dim=1).sum())
        ours = JsonTokenizer.from_directory(folder, 77, "whitespace")(strings)
        reference = HFTokenizer(str(folder), context_length=77)
        agree[(kind, "open_clip")] = int((ours == reference(strings)).all(dim=1).sum())
    print(agree)
    assert all(n == len(strings) for n in agree.values()), agree

    nllb = JsonTokenizer.from_directory(tmp_path / "nllb", 77, "none", language="fra_Latn")
    tag = nllb.tokenizer.token_to_id("fra_Latn")
    assert nllb(["un chat"])[0, 0] == tag and nllb(["un chat"])[0].tolist().count(2) == 1
    with pytest.raises(UserError, match="xyz_Latn"):
        JsonTokenizer.from_directory(tmp_path / "nllb", 77, "none", language="xyz_Latn")
    with pytest.raises(UserError, match="NLLB"):
        JsonTokenizer.from_directory(tmp_path / "xlm-r", 77, "none", language="fra_Latn")


@pytest.mark.parametrize("kind", ["m2m_100", "mt5", "xlm-roberta"])
def test_onnx_runtime_equals_pytorch_for_each_encoder_kind(kind, tmp_path, monkeypatch):
    """The exported text graph holds the transformers encoder, its padding mask and pooling: ONNX Runtime's
    embeddings equal PyTorch's at any length up to the context."""
    import numpy as np

    import dualtower.onnx
    from dualtower.export import export

    _, cfg, tok = small_pair(kind, tmp_path, monkeypatch)
    from dataclasses import replace

    cfg = cfg.replace(vision=replace(cfg.vision, image_size=64, width=64, depth=1, heads=4, mlp_dim=128),
                      preprocess=replace(cfg.preprocess, image_size=64))
    model = perturb(dualtower.create_model(cfg, seed=1).eval())
    export(model, tmp_path / "onnx")
    runtime = dualtower.onnx.load(tmp_path / "onnx")
    tokenizer = JsonTokenizer.from_directory(tok, 77, "whitespace")
    for n, length in ((1, 77), (7, 77), (7, 20)):
        ids = tokenizer(texts(n, seed=n), context_length=length)
        with torch.no_grad():
            ref = model.encode_text(ids).numpy()
        got = runtime.encode_text(ids.numpy())
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), (kind, n, length)


# The digits in three scripts: the class names and a caption template per language.
DIGIT_NAMES = {
    "en": ("a photo of the digit {c}", "zero one two three four five six seven eight nine".split()),
    "ru": ("фотография цифры {c}", "ноль один два три четыре пять шесть семь восемь девять".split()),
    "zh": ("数字{c}的照片", list("零一二三四五六七八九")),
}


def _digit_captions(language: str) -> list[str]:
    template, names = DIGIT_NAMES[language]
    return [template.format(c=name) for name in names]


@pytest.mark.slow
def test_a_small_xlmr_kind_model_learns_the_digits_in_three_languages(tmp_path):
    """A model with an XLM-R-kind text tower (a tokenizer trained on the three languages' captions) trained on
    the digits with captions in English, Russian and Chinese retrieves the held-out digits by the captions of
    each language: zero-shot accuracy (image -> the 10 captions) and text -> image R@1 (the best image is of the
    caption's digit), per language."""
    import csv

    import numpy as np

    from dualtower import configtree
    from dualtower.data import builtin
    from dualtower.images import eval_transform
    from dualtower.origin import Origin
    from dualtower.train.config import TrainConfig
    from dualtower.train.loop import train

    from .multilingual import make_xlmr_like

    corpus = [c for lang in DIGIT_NAMES for c in _digit_captions(lang)] * 20
    _, vocab = make_xlmr_like(tmp_path / "tok", vocab_size=300, corpus=corpus)
    digits = get_config("small-digits")
    text = hf_text("xlm-roberta-base", "mean", "linear", context=32, vocab_size=vocab, hidden_size=128,
                   num_hidden_layers=3, num_attention_heads=4, intermediate_size=512, max_position_embeddings=40,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = digits.replace(name="small-digits-xlmr", text=text, tokenizer="external", text_clean="whitespace")
    model = dualtower.create_model(cfg, seed=0)
    model.origin = Origin(tokenizer_dir=tmp_path / "tok")
    dualtower.save(model, tmp_path / "init")

    source = builtin.digits("train")
    (tmp_path / "img").mkdir()
    rows = []
    for i, label in enumerate(source.labels):
        source.load(i * source.per_image).image.save(tmp_path / "img" / f"{i}.png")
        for lang in DIGIT_NAMES:
            rows.append({"image": f"img/{i}.png", "caption": _digit_captions(lang)[label]})
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)

    train_cfg = configtree.load(TrainConfig, None, [
        f"--model.init={tmp_path / 'init'}", f"--data.train={tmp_path / 'train.csv'}", "--data.batch_size=128",
        "--data.workers=0", "--train.steps=400", "--train.progress=false", f"--train.out={tmp_path / 'run'}"])
    trained = dualtower.load(train(train_cfg)["checkpoint"]).eval()

    test = builtin.digits("test")
    transform = eval_transform(trained.cfg.preprocess)
    pixels = torch.stack([transform(test.load(i * test.per_image).image) for i in range(len(test.labels))])
    labels = np.asarray(test.labels)
    tokenizer = dualtower.get_tokenizer(trained)
    with torch.no_grad():
        images = trained.encode_image(pixels, normalize=True)
        report = {}
        for lang in DIGIT_NAMES:
            captions = trained.encode_text(tokenizer(_digit_captions(lang)), normalize=True)
            sims = (images @ captions.T).numpy()  # (N, 10)
            zero_shot = float((sims.argmax(axis=1) == labels).mean())
            text_r1 = float((labels[sims.argmax(axis=0)] == np.arange(10)).mean())
            report[lang] = (zero_shot, text_r1)
    print("held-out digits, zero-shot accuracy / text->image R@1:",
          {k: f"{a:.3f} / {b:.2f}" for k, (a, b) in report.items()})
    for lang, (zero_shot, text_r1) in report.items():
        assert zero_shot >= 0.6 and text_r1 >= 0.8, (lang, report)



@pytest.mark.slow
def test_open_clip_hub_layout_of_a_multilingual_model_loads_at_full_size(tmp_path, monkeypatch):
    """laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k's layout: open_clip_config.json names its encoder
    (hf_model_name) and tokenizer; the architecture is found by them, the tokenizer read from the folder, and the
    outputs equal open_clip's at full size (xlm-roberta-base: 278M parameters, 192M of them its token table)."""
    from open_clip.push_to_hf_hub import save_for_hf

    from .test_hub import _NoTokenizer

    name = "xlm-roberta-base-ViT-B-32"
    text = get_config(name).text
    hf = transformers.AutoConfig.for_model(text.model_type, **text.fields)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(lambda cls, *a, **k: hf))
    torch.manual_seed(0)
    ref = perturb(open_clip.create_model(name, pretrained_hf=False)).eval()
    save_for_hf(ref, _NoTokenizer(), open_clip.get_model_config(name), str(tmp_path / "repo"))
    make_xlmr_like(tmp_path / "repo")
    ours = dualtower.load(tmp_path / "repo")
    assert ours.cfg.text.model_type == "xlm-roberta" and ours.cfg.text.pool == "mean"
    ids = dualtower.get_tokenizer(ours)(texts(16, seed=7))
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = assert_close(ours.encode_text(ids), ref.encode_text(ids), "text")
        image = assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image")
    print(f"{name} (open_clip hub layout): text {text:.2e} image {image:.2e}")


def test_the_language_option_reaches_the_tokenizer_from_the_command_line(tmp_path, capsys):
    """`--language` on a command that opens an NLLB-kind model puts that tag before each text; an unknown tag
    is a one-line error naming it."""
    from dualtower.cli import main
    from dualtower.origin import Origin
    from dualtower.runtimes import OpenOptions, open as open_embedder

    from .multilingual import make_nllb_like

    ids, vocab = make_nllb_like(tmp_path / "tok")
    cfg = get_config("small-digits").replace(
        name="tiny-nllb", tokenizer="external", text_clean="whitespace",
        text=hf_text("facebook/nllb-200-distilled-600M", "cls", "linear", context=32, vocab_size=vocab, d_model=32,
                     encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, max_position_embeddings=40))
    model = dualtower.create_model(cfg, seed=0)
    model.origin = Origin(tokenizer_dir=tmp_path / "tok")
    dualtower.save(model, tmp_path / "ckpt")
    embedder = open_embedder(str(tmp_path / "ckpt"), options=OpenOptions(device="cpu", language="rus_Cyrl"))
    assert embedder.tokenizer.numpy(["кошка"])[0, 0] == ids["rus_Cyrl"]
    image = tmp_path / "digit.png"
    from dualtower.data import builtin

    builtin.digits("test").load(0).image.save(image)
    for language in ("fra_Latn", "zho_Hans"):
        assert main(["classify", "--device", "cpu", "--model", str(tmp_path / "ckpt"), "--language", language,
                     "--labels", "un,deux", str(image)]) == 0
    assert main(["classify", "--device", "cpu", "--model", str(tmp_path / "ckpt"), "--language", "xyz_Latn",
                 "--labels", "un,deux", str(image)]) != 0
    assert "xyz_Latn" in capsys.readouterr().err
