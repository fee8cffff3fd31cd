"""SigLIP's SentencePiece tokenizer: ids equal to transformers' SiglipTokenizer on the same spiece.model, for a
model trained here with sentencepiece (no download) and a corpus of 2,500 varied strings; end to end, a
SigLIP model loaded from a directory with its spiece.model encodes text."""

import random

import pytest
import torch

import dualtower

from .conftest import save_hf
from dualtower.tokenizers.spiece import SentencePieceTokenizer

spm = pytest.importorskip("sentencepiece")  # in the test extras; the skip only guards a bare environment


def _words() -> list[str]:
    """Words from the CLIP BPE vocabulary shipped in the package (real English, with some odd tokens)."""
    import gzip
    from importlib import resources

    raw = resources.files("dualtower").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").splitlines()[1:20000]
    words = {m.replace(" ", "").replace("</w>", "") for m in merges}
    return sorted(w for w in words if w.isalpha() and len(w) > 2)


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    rng = random.Random(0)
    words = _words()
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) for _ in range(6000)]
    corpus += ["A photo of a Cat.", "Two dogs, three cats!", "東京の夜景", "café élève naïve", "emoji 🐕 here"] * 20
    directory = tmp_path_factory.mktemp("spiece")
    (directory / "corpus.txt").write_text("\n".join(corpus), encoding="utf-8")
    # The special ids of SigLIP's spiece.model: <pad> 0, </s> 1, <unk> 2, no <s>; transformers pads with </s>.
    spm.SentencePieceTrainer.train(input=str(directory / "corpus.txt"), model_prefix=str(directory / "spiece"),
                                   vocab_size=2000, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, character_coverage=0.9995, minloglevel=2)
    return directory / "spiece.model", words


def _corpus(words, n=2500) -> list[str]:
    rng = random.Random(1)
    odd = ["", " ", "\t\n", "</s>", "<unk>", "a </s> b", "x<unk>y", "▁", "▁▁word", "word▁", "  lead and trail  ",
           "UPPER lower MiXeD", "it's a \"quote\"", "(brackets) [and] {braces}", "hyphen-ated—dash", "tab\tsep",
           "new\nline", "ideographic\u3000space", "东京 Tokyo 東京", "Ünïcödé ÀÉÎÕÜ", "🐕🐕🐕", "a" * 300,
           "café au lait", "😀 smile", "1,234.56 $ % #", "</s></s>", " </s> ", "<unk> <unk>", "end </s>"]
    out = list(odd)
    pieces = ["!", "?", ".", ",", ";", ":", "'", '"', "-", "(", ")", "</s>", "<unk>", "▁", "\u3000", "\t", "  ",
              "é", "ß", "東", "🐕", "$", "%", "&", "@", "#", "12", "3.5"]
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 40 if rng.random() < 0.1 else 12)):
            r = rng.random()
            token = rng.choice(words) if r < 0.7 else rng.choice(pieces)
            if rng.random() < 0.2:
                token = token.upper() if rng.random() < 0.5 else token.capitalize()
            parts.append(token)
        sep = rng.choice([" ", " ", " ", "", "  "])
        out.append(sep.join(parts))
    return out


def test_ids_equal_transformers_siglip_tokenizer(spiece):
    transformers = pytest.importorskip("transformers")
    model_file, words = spiece
    theirs = transformers.SiglipTokenizer(vocab_file=str(model_file), model_max_length=64)
    ours = SentencePieceTokenizer(model_file, context_length=64)
    texts = _corpus(words)
    want = theirs(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")["input_ids"]
    got = ours(texts)
    bad = [t for t, a, b in zip(texts, got, want) if not torch.equal(a, b)]
    print(f"SigLIP tokenizer: {len(texts) - len(bad)} / {len(texts)} equal")
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:5]!r}"
    # Shorter contexts (SO400M's 16) cut and end the same way.
    short = theirs(texts[:500], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    assert torch.equal(ours(texts[:500], context_length=16), short["input_ids"])


def test_a_siglip_directory_with_its_spiece_model_encodes_text(spiece, tmp_path):
    import shutil

    import transformers

    from .test_parity_families import _siglip_config

    model_file, _ = spiece
    hf = transformers.SiglipModel(_siglip_config()).eval()
    save_hf(hf, tmp_path / "hf")
    with pytest.raises(ValueError, match="spiece.model"):  # no tokenizer file beside the weights: said so
        dualtower.get_tokenizer(dualtower.load(tmp_path / "hf"))
    # A vocabulary of 500 for the tiny model: keep ids in range by training a matching small model.
    spm.SentencePieceTrainer.train(input=str(model_file.parent / "corpus.txt"), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=500, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    shutil.copy(tmp_path / "sp.model", tmp_path / "hf" / "spiece.model")
    ours = dualtower.load(tmp_path / "hf")
    tokenizer = dualtower.get_tokenizer(ours)
    ids = tokenizer(["a photo of a cat", "Two dogs!"])
    want = transformers.SiglipTokenizer(vocab_file=str(tmp_path / "hf" / "spiece.model"), model_max_length=16)(
        ["a photo of a cat", "Two dogs!"], padding="max_length", max_length=16, truncation=True,
        return_tensors="pt")["input_ids"]
    assert torch.equal(ids, want)
    with torch.no_grad():
        assert torch.allclose(ours.encode_text(ids), hf.text_model(input_ids=ids).pooler_output, atol=1e-5)
    # Saved in our format, the checkpoint keeps the tokenizer file.
    dualtower.save(ours, tmp_path / "ours")
    assert (tmp_path / "ours" / "spiece.model").is_file()
    assert torch.equal(dualtower.get_tokenizer(dualtower.load(tmp_path / "ours"))(["Two dogs!"]), want[1:])
