"""MetaCLIP 2 worldwide: transformers' MetaClip2Model directories both ways, its tokenizers (XLM-V's kind, mT5's
kind) from the repo's tokenizer.json, and open_clip's ViT-*-worldwide configs. Same random weights in the
reference and in ours; fp32; max |diff| relative to max |reference| <= 1e-5."""

import open_clip
import pytest
import torch
import transformers

import dualtower
from dualtower.archs import get_config
from dualtower.tokenizers.hf_json import JsonTokenizer

from .conftest import assert_close, save_hf
from .multilingual import make_mt5_like, make_xlmr_like, texts
from .test_parity_families import perturb
from .test_parity_hf import _features

CONTEXT = 77
TEXTS = texts(2000)


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("xlmv")
    ids, vocab = make_xlmr_like(directory)
    assert (ids["<s>"], ids["<pad>"], ids["</s>"]) == (0, 1, 2)
    return directory, vocab


def _metaclip2_config(vocab: int, eos: int = 2, pad: int = 1):
    text = dict(vocab_size=vocab, hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=CONTEXT, hidden_act="gelu", eos_token_id=eos, pad_token_id=pad,
                bos_token_id=0)
    vision = dict(hidden_size=64, intermediate_size=120, num_hidden_layers=2, num_attention_heads=4, image_size=56,
                  patch_size=14, hidden_act="gelu")
    return transformers.MetaClip2Config(text_config=text, vision_config=vision, projection_dim=40)


def _compare(hf, ours, ids):
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image = assert_close(ours.encode_image(pixels), _features(hf.get_image_features(pixel_values=pixels)), "image")
        text = assert_close(ours.encode_text(ids), _features(hf.get_text_features(input_ids=ids)), "text")
    return image, text


def test_metaclip2_directory_loads_and_exports_with_its_tokenizer(xlmr_dir, tmp_path):
    """A MetaClip2Model directory as facebook/metaclip-2-worldwide-* ships it: our model equals transformers' on
    ids from the repo's tokenizer (AutoTokenizer's ids equal ours on 2,000 multilingual strings), pooling at the
    first </s> (id 2), not CLIP's legacy argmax; written back with to="hf" it is a MetaClip2Model again."""
    directory, vocab = xlmr_dir
    torch.manual_seed(0)
    hf = perturb(transformers.MetaClip2Model(_metaclip2_config(vocab)).eval())
    save_hf(hf, tmp_path / "repo")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "repo" / name).write_bytes((directory / name).read_bytes())
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "repo")
    expected = reference(TEXTS, padding="max_length", max_length=CONTEXT, truncation=True,
                         return_tensors="pt").input_ids

    model = dualtower.load(tmp_path / "repo")
    assert (model.cfg.text.pool, model.cfg.text.eot_id, model.cfg.tokenizer) == ("eot", 2, "external")
    tokenizer = dualtower.get_tokenizer(model)
    assert isinstance(tokenizer, JsonTokenizer)
    ids = tokenizer(TEXTS)
    assert torch.equal(ids, expected), "ids differ from transformers' AutoTokenizer"
    elsewhere = (ids.argmax(dim=1) != (ids == 2).int().argmax(dim=1)).float().mean()
    assert elsewhere > 0.9, elsewhere  # CLIP's legacy argmax rule would pool elsewhere in nearly every row
    print(f"tokenizer: {len(TEXTS)} of {len(TEXTS)} strings equal")
    diffs = _compare(hf, model, ids[:64])
    print(f"MetaClip2Model: image {diffs[0]:.2e} text {diffs[1]:.2e}")

    dualtower.convert.export(model, tmp_path / "back", "hf")
    again = transformers.MetaClip2Model.from_pretrained(tmp_path / "back").eval()
    assert again.config.model_type == "metaclip_2"
    _compare(again, model, ids[:64])
    back = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert torch.equal(back(TEXTS[:200], padding="max_length", max_length=CONTEXT, truncation=True,
                            return_tensors="pt").input_ids, expected[:200])
    with pytest.raises(dualtower.convert.ConversionError, match="MetaClip2Model"):  # not a CLIPModel
        dualtower.convert.get_format("hf-clip").check(model.cfg)


def test_open_clip_hf_tokenizer_equals_ours_on_the_same_files(xlmr_dir, tmp_path):
    """open_clip's worldwide configs read the tokenizer through its HFTokenizer, cleaning by tokenizer_kwargs
    (H/bigG: whitespace; L/14's mT5: canonicalize): ids equal ours with the same cleaning, XLM-V's and mT5's kind."""
    from open_clip.tokenizer import HFTokenizer

    directory, _ = xlmr_dir
    ids, _ = make_mt5_like(tmp_path / "mt5")
    assert (ids["<pad>"], ids["</s>"]) == (0, 1)
    for folder in (directory, tmp_path / "mt5"):
        for clean in ("whitespace", "canonicalize"):
            reference = HFTokenizer(str(folder), context_length=CONTEXT, clean=clean)
            assert torch.equal(JsonTokenizer.from_directory(folder, CONTEXT, clean)(TEXTS), reference(TEXTS)), \
                (folder.name, clean)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-L-14-worldwide"])
def test_open_clip_worldwide_models_match(name, tmp_path):
    """open_clip's ViT-*-worldwide at full size (L/14, its smallest: 0.58B parameters): plain CLIP towers with
    mT5's 250k vocabulary, pooled at the first end token. Ids drawn at random over the vocabulary with the end
    token placed. (H/14 and bigG, XLM-V's 901k vocabulary, end token 2: keys and shapes against open_clip in
    test_parity_open_clip, the pooling rule on a tiny worldwide model in test_hub.)"""
    torch.manual_seed(0)
    ref = perturb(open_clip.create_model(name).eval())
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    ours = dualtower.load(path, arch=name)
    path.unlink()
    cfg = get_config(name)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, cfg.text.vocab_size, (4, cfg.text.context_length), generator=g)
    for row, end in enumerate((5, 20, 76, 1)):
        ids[row, end] = cfg.text.eot_id
        ids[row, end + 1:] = cfg.text.pad_id
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image = assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image")
        text = assert_close(ours.encode_text(ids), ref.encode_text(ids), "text")
    print(f"{name}: image {image:.2e} text {text:.2e}")


def test_plan_counts_the_multilingual_token_table():
    from dualtower.plan import plan

    p = plan("ViT-H-14-worldwide", gpus=8, batch=256)
    assert p.token_table == 901629 * 1024 and round(p.token_table / 1e9, 2) == 0.92
    assert "0.92B of them the text token table" in p.table()
    # FSDP gathers the text tower's own parameters whole while it runs: the table alone is 1.8 GB in bf16
    assert p.gathered >= 2 * p.token_table
