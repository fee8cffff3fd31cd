"""Multilingual text towers: open_clip's xlm-roberta-*, nllb-clip-* and mt5-* configs (its HFTextEncoder around a
transformers encoder). open_clip fetches the encoder's config from the Hub; here it gets a small hand-made config
of the same kind (AutoConfig.from_pretrained answered locally), and ours is built from the same fields. Same
random weights; fp32; max |diff| relative to max |reference| <= 1e-5."""


import open_clip
import pytest
import torch
import transformers

import dualtower
from dualtower.archs import get_config, hf_text
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
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text = assert_close(ours.encode_text(ids), ref.encode_text(ids), "text embeddings")
        image = assert_close(ours.encode_image(pixels), ref.encode_image(pixels), "image embeddings")
        ref_logits = ref.logit_scale.exp() * ref.encode_image(pixels, normalize=True) @ \
            ref.encode_text(ids, normalize=True).T
        assert_close(ours(pixels, ids).logits_per_image, ref_logits, "logits")
    print(f"{kind}: text {text:.2e} image {image:.2e}")

    out = tmp_path / "exported.safetensors"
    dualtower.convert.export(ours, out, "open_clip")
    from safetensors.torch import load_file

    again = open_clip.create_model(SMALL[kind][0], pretrained_hf=False).eval()
    again.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        assert_close(ours.encode_text(ids), again.encode_text(ids), "text embeddings after export")
