"""Multilingual test texts and small tokenizers of the kinds multilingual models ship (the real files cannot be
downloaded here).

`texts(n)` makes n strings in many scripts: Latin with accents, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
Bengali, CJK, Japanese kana, Korean, Thai, emoji (with skin tones and joiners), mixed case, HTML entities,
combining marks, odd whitespace, and texts far past any context. The tokenizers are trained here on other texts
of the same generator, so the test strings hold pieces the vocabulary lacks (unknown and byte-split pieces).

- `make_xlmr_like`: XLM-R / XLM-V's kind (MetaCLIP 2 worldwide H/bigG, open_clip's xlm-roberta-* configs):
  a Unigram model over "▁"-marked words, `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, each text `<s> ... </s>`.
- `make_mt5_like`: mT5's kind (MetaCLIP 2 worldwide L/14, open_clip's mt5-* configs): Unigram, `<pad>` 0,
  `</s>` 1, `<unk>` 2, each text `... </s>`, no start token.
"""

from __future__ import annotations

import json
import random

WORDS = {
    "latin": ["café", "naïve", "résumé", "Straße", "İstanbul", "ĳssel", "Ångström", "señor", "façade", "Ærø",
              "photo", "cat", "DOG", "Zürich", "crème brûlée", "a", "the", "of", "São Paulo", "Łódź"],
    "cyrillic": ["кошка", "собака", "Москва", "фотография", "ЁЛКА", "дом", "улица", "Київ", "сербски"],
    "greek": ["γάτα", "σκύλος", "ΣΊΣΥΦΟΣ", "Αθήνα", "φωτογραφία"],
    "arabic": ["قطة", "كلب", "صورة", "القاهرة", "مدينة", "الشمس"],
    "hebrew": ["חתול", "כלב", "תמונה", "ירושלים"],
    "devanagari": ["बिल्ली", "कुत्ता", "तस्वीर", "दिल्ली", "नमस्ते", "क्षत्रिय"],
    "bengali": ["বিড়াল", "কুকুর", "ছবি", "ঢাকা"],
    "cjk": ["猫", "狗", "照片", "北京", "東京の夜景", "上海市", "一只猫在沙发上"],
    "kana": ["ねこ", "いぬ", "カメラ", "しゃしん", "ラーメン"],
    "korean": ["고양이", "강아지", "사진", "서울", "한국어"],
    "thai": ["แมว", "สุนัข", "รูปภาพ", "กรุงเทพมหานคร", "ภาษาไทย"],
    "emoji": ["😀", "👍🏽", "👨‍👩‍👧", "🐕🐕", "🇯🇵", "❤️", "🏳️‍🌈"],
    "entities": ["&amp;", "&lt;b&gt;", "&quot;q&quot;", "&#39;", "&nbsp;", "&eacute;"],
    "odd": ["e\u0301", "\u200b", "\u3000", "\t", "  ", "ﬁ", "ｆｕｌｌｗｉｄｔｈ", "x" * 40, "123", "3.14159", "C++",
            "snake_case", "camelCaseWord", "ALL CAPS", "mIxEd CaSe"],
}
SCRIPTS = sorted(WORDS)


def texts(n: int, seed: int = 0) -> list[str]:
    """n strings, each mixing one to three scripts; one in twenty far past a 77-token context."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scripts = rng.sample(SCRIPTS, rng.randint(1, 3))
        length = rng.randint(60, 120) if i % 20 == 19 else rng.randint(1, 12)
        words = [rng.choice(WORDS[rng.choice(scripts)]) for _ in range(length)]
        sep = "" if scripts[0] in ("cjk", "kana", "thai") and rng.random() < 0.5 else " "
        out.append(sep.join(words))
    return out


def _unigram(directory, ids: dict[str, int], template: str, pair: str, config: dict, vocab_size: int,
             corpus: list[str] | None = None):
    """A SentencePiece unigram model trained here (nmt_nfkc normalisation), written as tokenizer.json the way
    transformers' converter writes the real repos' files: the Unigram pieces and scores, a Precompiled charsmap
    and a Replace of repeated spaces as normaliser, Metaspace, the template post-processor."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    directory.mkdir(parents=True, exist_ok=True)
    lines = corpus if corpus is not None else texts(3000, seed=99)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    names = {"<s>": "bos", "<pad>": "pad", "</s>": "eos", "<unk>": "unk"}
    flags = {f"{names[t]}_id": ids.get(t, -1) for t in names}
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "spm"), vocab_size=vocab_size, model_type="unigram",
        hard_vocab_limit=False, normalization_rule_name="nmt_nfkc", character_coverage=0.9995, minloglevel=2,
        user_defined_symbols=[t for t in ids if t not in names], **flags)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((directory / "spm.model").read_bytes())
    for name in ("spm.model", "spm.vocab", "corpus.txt"):
        (directory / name).unlink()
    pieces = [(p.piece, p.score) for p in proto.pieces]
    assert all(pieces[i][0] == t for t, i in ids.items()), pieces[:6]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=ids["<unk>"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
                                                 normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ids if t != "<unk>"])
    used = [t for t in ids if t in template]
    tokenizer.post_processor = processors.TemplateProcessing(single=template, pair=pair,
                                                             special_tokens=[(t, ids[t]) for t in used])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return ids, tokenizer.get_vocab_size()


def make_xlmr_like(directory, vocab_size: int = 1500, corpus: list[str] | None = None):
    """Returns ({special: id}, vocabulary size). `corpus`: the texts it is trained on (default: `texts`')."""
    return _unigram(directory, {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}, "<s> $A </s>",
                    "<s> $A </s> </s> $B </s>",
                    {"tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                     "pad_token": "<pad>", "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>",
                     "mask_token": "<mask>", "model_max_length": 512}, vocab_size, corpus)


def make_mt5_like(directory, vocab_size: int = 1500):
    return _unigram(directory, {"<pad>": 0, "</s>": 1, "<unk>": 2}, "$A </s>", "$A </s> $B </s>",
                    {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>",
                     "unk_token": "<unk>", "extra_ids": 0, "model_max_length": 512}, vocab_size)


LANGUAGES = ("eng_Latn", "fra_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans", "arb_Arab", "hin_Deva", "tha_Thai")


def make_nllb_like(directory, vocab_size: int = 1500):
    """NLLB's kind (open_clip's nllb-clip-* configs): BPE over "▁"-marked words with a SentencePiece charsmap,
    `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, the language tags after the pieces; each text `lang text </s>`."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(texts(3000, seed=99)), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "spm"), vocab_size=300,
                                             hard_vocab_limit=False, normalization_rule_name="nmt_nfkc",
                                             minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((directory / "spm.model").read_bytes())
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
                                                 normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.train_from_iterator(texts(3000, seed=99), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False))
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in LANGUAGES])
    for name in ("spm.model", "spm.vocab", "corpus.txt"):
        (directory / name).unlink()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "NllbTokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>", "src_lang": None, "legacy_behaviour": False,
        "additional_special_tokens": list(LANGUAGES), "model_max_length": 1024}))
    return {t: tokenizer.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", *LANGUAGES)}, \
        tokenizer.get_vocab_size()
