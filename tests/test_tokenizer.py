"""Tokenizer ids identical to open_clip's SimpleTokenizer on a varied corpus and on arbitrary text."""

import glob
import os
import random
import sys
import unicodedata

import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dualtower
from dualtower.tokenizers import ClipTokenizer


@pytest.fixture(scope="module")
def ref():
    return open_clip.tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def ours():
    return ClipTokenizer()


def _corpus() -> list[str]:
    """Real prose from installed packages' metadata, plus strings built to hit every cleaning rule."""
    lines = []
    for path in sorted(glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "*.dist-info",
                                              "METADATA")))[:60]:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines += [ln.strip() for ln in f if len(ln.strip()) > 3][:40]
    rng = random.Random(0)
    letters = [chr(c) for c in range(0x20, 0x3000) if unicodedata.category(chr(c))[0] in "LMNPSZC"]
    made = [
        "", " ", "\t\n", "a", "A PHOTO OF A CAT", "it's they're we've I'm you'll he'd", "&amp;lt;b&amp;gt; &quot;q&quot;",
        "<start_of_text>", "x<end_of_text>y", "a <<start_of_text> b", "<END_OF_TEXT>", "naïve café résumé", "e\u0301",
        "ﬁ ligature and ｆｕｌｌｗｉｄｔｈ", "日本語のテキストと中文", "한국어", "😀👍🏽👨‍👩‍👧 emoji", "\x00\x07\x1b[31mred\x1b[0m",
        "Ã©tÃ© mojibake", "\u200b\u180e\u2028\u3000 spaces", "İstanbul ΣΊΣΥΦΟΣ", "\u0345 ypogegrammeni",
        "123456789 3.14159 1e-9", "word " * 200, "x" * 1000, "\ud800 lone surrogate",
    ]
    made += ["".join(rng.choice(letters) for _ in range(rng.randint(1, 40))) for _ in range(400)]
    corpus = made + lines
    assert len(corpus) >= 1000, len(corpus)
    return corpus


def _reference_ids(ref, texts, length=77):
    return open_clip.tokenizer.SimpleTokenizer.__call__(ref, texts, context_length=length)


def test_ids_equal_open_clip_on_corpus(ref, ours):
    corpus = _corpus()
    a, b = _reference_ids(ref, corpus), ours(corpus)
    bad = [corpus[i] for i in range(len(corpus)) if not torch.equal(a[i], b[i])]
    assert not bad, f"{len(bad)} of {len(corpus)} differ, e.g. {bad[:3]!r}"


@pytest.mark.parametrize("length", [2, 5, 77, 100])
def test_truncation_keeps_end_token_last(ref, ours, length):
    texts = ["one two three four five six seven", "", "a " * 150]
    assert torch.equal(ours(texts, context_length=length), _reference_ids(ref, texts, length))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_text_matches_reference_and_is_well_formed(text):
    ours = dualtower.get_tokenizer("ViT-B-32")
    ids = ours([text])[0]
    assert ids.shape == (77,)
    assert ids[0] == ours.sot_id
    assert int((ids == ours.eot_id).sum()) == 1 or text.lower().count("<end_of_text>") > 0
    assert torch.equal(ids, _reference_ids(_REF, [text])[0])


_REF = open_clip.tokenizer.SimpleTokenizer()


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=120))
def test_ascii_text_matches_reference(text):
    """ASCII takes the fast path when it can: the same ids as the reference either way."""
    ours = dualtower.get_tokenizer("ViT-B-32")
    assert torch.equal(ours([text])[0], _reference_ids(_REF, [text])[0])


def test_context_length_per_architecture():
    tok = dualtower.get_tokenizer(dualtower.get_config("tiny").replace(
        text=dualtower.TextConfig(context_length=16, width=32, depth=1, heads=2, mlp_dim=64)))
    assert tok(["hello"]).shape == (1, 16)


def test_decode_roundtrip(ours):
    assert ours.decode(ours(["A photo of a cat, on a mat!"])[0].tolist()) == "a photo of a cat , on a mat !"


def test_non_string_is_a_clear_error(ours):
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        ours(["ok", 3])


# Text that is plain except for "&" and "<": lower case alone is right unless an "&" may open an HTML entity or
# a special token is spelled out, which the fast path must notice.
ENTITY_AND_TAG_CASES = [
    "black & white", "a&b", "&", "a &", "& &", "&& and &", "&amp; &amp &lt;3 &LT; &#39; &#x27; &#39 &copy x",
    "fish &chips", "rock&roll", "&;", "&#;", "5 < 6 & 7 > 3", "<b>bold</b> & <i>it</i>", "a<b", "<<", "x <3 y",
    "<start_of_text>", "the <END_OF_TEXT> end", "<start_of_text", "<Start_Of_Text>x", "a\t&\tb", "&\n<",
]


def test_ampersands_and_angle_brackets_match_reference(ref, ours):
    a, b = _reference_ids(ref, ENTITY_AND_TAG_CASES), ours(ENTITY_AND_TAG_CASES)
    bad = [t for t, x, y in zip(ENTITY_AND_TAG_CASES, a, b) if not torch.equal(x, y)]
    assert not bad


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="&<>#;/x aAmpltTgqou\t\n_ofsrtendEXS0123", max_size=40), min_size=1, max_size=6))
def test_entity_and_tag_fragments_in_batches_match_reference(texts):
    """Batches mixing text that needs cleaning with text that does not: each text keeps its own ids."""
    ours = dualtower.get_tokenizer("ViT-B-32")
    assert torch.equal(ours(texts), _reference_ids(_REF, texts))


def test_fresh_warm_threaded_pickled_and_cleared_caches_agree(ref, monkeypatch):
    import pickle
    import threading

    from dualtower.tokenizers import clip_bpe as tokenizer_module

    corpus = _corpus()
    want = _reference_ids(ref, corpus)
    tok = ClipTokenizer()
    assert torch.equal(tok(corpus), want)  # fresh
    assert torch.equal(tok(corpus), want)  # warm
    assert torch.equal(pickle.loads(pickle.dumps(tok))(corpus[:200]), want[:200])

    shared, results = ClipTokenizer(), {}

    def work(k):
        results[k] = [shared(corpus[i : i + 37]) for i in range(k, len(corpus), 37 * 4)]

    threads = [threading.Thread(target=work, args=(37 * k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        for j, i in enumerate(range(37 * k, len(corpus), 37 * 4)):
            assert torch.equal(results[37 * k][j], want[i : i + 37])

    monkeypatch.setattr(tokenizer_module, "_CACHE_LIMIT", 50)  # the cache is emptied again and again
    small = ClipTokenizer()
    assert torch.equal(torch.cat([small(corpus[i : i + 64]) for i in range(0, len(corpus), 64)]), want)


def test_empty_batch(ours):
    assert ours([]).shape == (0, 77) and ours.encode_batch([]) == []
