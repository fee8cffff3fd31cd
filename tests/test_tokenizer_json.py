"""SigLIP 2's Gemma tokenizer from a repo's tokenizer.json: ids equal open_clip's HFTokenizer (clean
"canonicalize", its SigLIP 2 configs) and transformers' Siglip2Tokenizer (a Siglip2Model directory, the
processor's padding="max_length", max_length=64) on the same files.

The real Gemma files are not available offline, so the test makes a tokenizer of the same kind: byte-fallback BPE
trained here on English text, Gemma's special tokens at Gemma's ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3), the
256 byte pieces, spaces normalised to "▁", `<eos>` after each text, and the tokenizer_config.json SigLIP 2's
repos carry."""

import json

import pytest
import torch

import dualtower
from dualtower.tokenizers.hf_json import JsonTokenizer

from .conftest import CAPTIONS, save_hf

TEXTS = CAPTIONS + [
    "A Photo of a CAT!", "snake_case_words and   runs\tof whitespace", "Caf\u00e9 cr\u00e8me &amp; na\u00efve",
    "\u0130stanbul \u00c9COLE \u00df", "punctuation: (a) [b] {c} 'd' \"e\" -- f...", "\u2581leading piece mark",
    "x" * 300, "\U0001F600 emoji only", "  ",
]


def _make_gemma_like(directory):
    import sklearn.datasets
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    corpus = []
    for load in (sklearn.datasets.load_digits, sklearn.datasets.load_wine, sklearn.datasets.load_breast_cancer):
        corpus += load().DESCR.splitlines()
    corpus += [c.lower() for c in corpus] + CAPTIONS
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2000, special_tokens=special,
                                                              show_progress=False))
    # SigLIP 2's files end every text with <eos> (their tokenizers were saved with add_eos_token=True).
    tokenizer.post_processor = processors.TemplateProcessing(single="$A <eos>", pair="$A <eos> $B <eos>",
                                                             special_tokens=[("<eos>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": False, "add_eos_token": True, "pad_token": "<pad>",
        "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>", "padding_side": "right",
        "model_max_length": 64}))
    return tokenizer.get_vocab_size()


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma")
    _make_gemma_like(directory)
    return directory


def test_ids_equal_open_clips_siglip2_tokenizer(gemma_dir):
    from open_clip.tokenizer import HFTokenizer

    reference = HFTokenizer(str(gemma_dir), context_length=64, clean="canonicalize")
    ours = JsonTokenizer.from_directory(gemma_dir, 64, "canonicalize")
    expected = reference(TEXTS)
    assert torch.equal(ours(TEXTS), expected)
    assert (expected[:, 0] != 0).sum() >= len(TEXTS) - 3  # the texts are not all empty after cleaning
    for length in (8, 16):  # a shorter context cuts the text and keeps the end token
        assert torch.equal(ours(TEXTS, context_length=length), reference(TEXTS, context_length=length))
    for clean in ("lower", "whitespace"):
        reference = HFTokenizer(str(gemma_dir), context_length=64, clean=clean)
        assert torch.equal(JsonTokenizer.from_directory(gemma_dir, 64, clean)(TEXTS), reference(TEXTS)), clean


def test_ids_equal_transformers_siglip2_tokenizer(gemma_dir, tmp_path):
    """In a Siglip2Model directory transformers loads its Siglip2Tokenizer (Gemma's, lower-cased); with the
    processor's settings (padding to the context length: 64 in SigLIP 2, the tiny test model's 16 here) its ids
    equal ours with text_clean "hf-lowercase"."""
    import transformers

    from .test_siglip2 import _siglip2_config

    config = _siglip2_config()
    config.text_config.vocab_size = 2000
    save_hf(transformers.Siglip2Model(config), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((gemma_dir / name).read_bytes())
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(reference).__name__ == "Siglip2Tokenizer"
    context = config.text_config.max_position_embeddings
    expected = reference(TEXTS, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    model = dualtower.load(tmp_path)
    assert model.cfg.text_clean == "hf-lowercase"
    tokenizer = dualtower.get_tokenizer(model)
    assert isinstance(tokenizer, JsonTokenizer)
    assert torch.equal(tokenizer(TEXTS), expected.input_ids)
    assert tokenizer(["A Photo"]).tolist() == tokenizer(["a photo"]).tolist()

    # The files travel with the model: into our checkpoint, and back out to a transformers directory.
    dualtower.save(model, tmp_path / "ours")
    again = dualtower.load(tmp_path / "ours")
    assert torch.equal(dualtower.get_tokenizer(again)(TEXTS), expected.input_ids)
    dualtower.convert.export(again, tmp_path / "hf", "hf")
    back = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert torch.equal(back(TEXTS, padding="max_length", max_length=context, truncation=True,
                            return_tensors="pt").input_ids, expected.input_ids)


def test_a_tokenizer_without_its_special_tokens_is_refused(gemma_dir, tmp_path):
    config = json.loads((gemma_dir / "tokenizer_config.json").read_text())
    config["pad_token"] = "<nothing-like-this>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer.json").write_bytes((gemma_dir / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="no pad token '<nothing-like-this>'"):
        JsonTokenizer.from_directory(tmp_path, 64, "canonicalize")
    with pytest.raises(ValueError, match="text clean 'shout'"):
        JsonTokenizer(gemma_dir / "tokenizer.json", 64, "shout")


@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP2", "ViT-B-16-SigLIP", "ViT-gopt-16-SigLIP2-384"])
def test_open_clip_hub_configs_name_the_architecture_and_the_text_cleaning(name):
    """An open_clip hub repo's model_cfg (here open_clip's own config file) decodes to the one architecture of
    that name, SigLIP and SigLIP 2 told apart by their vocabularies, with the cleaning its tokenizer_kwargs ask
    for."""
    import open_clip

    from dualtower.convert.open_clip.hub import decode_model_cfg

    model_cfg = open_clip.get_model_config(name)
    cfg = decode_model_cfg(model_cfg, "repo")
    assert cfg == dualtower.get_config(name).replace(text_clean=cfg.text_clean)
    assert cfg.text_clean == model_cfg["text_cfg"].get("tokenizer_kwargs", {}).get("clean", "whitespace")
