"""The preprocessing of a transformers directory comes from the image processor saved beside the model, whichever
way transformers saved it: `processor.save_pretrained` (transformers 5: `processor_config.json`, the image
processor nested inside) or `image_processor.save_pretrained` (`preprocessor_config.json`). Non-default settings
are read from both; a vision model without either, or with settings that cannot be read, is refused by name."""

import json
import shutil

import numpy as np
import pytest
import torch

import dualtower
from dualtower.checkpoint import CheckpointError
from dualtower.images import open_image

from .test_parity_families import _internvl_vision_config
from .test_parity_hf import _hf_config, _random_hf


def _word_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))


def _save_processor(way: str, image_processor, processor_class, folder, tmp_path):
    """The image processor's settings into `folder` the way transformers writes them ("processor": a whole
    processor's processor_config.json; "image_processor": preprocessor_config.json)."""
    if way == "image_processor":
        image_processor.save_pretrained(folder)
        assert (folder / "preprocessor_config.json").is_file()
        return
    scratch = tmp_path / f"processor-{way}"
    processor_class(image_processor=image_processor, tokenizer=_word_tokenizer()).save_pretrained(scratch)
    assert "image_processor" in json.loads((scratch / "processor_config.json").read_text())
    assert not (scratch / "preprocessor_config.json").exists()
    shutil.copy(scratch / "processor_config.json", folder / "processor_config.json")


def _same_pixels(model, image_processor, photos):
    transform = dualtower.get_transform(model)
    for name in ("astronaut", "coffee", "chelsea"):
        ours = transform(open_image(_as_png(photos[name])))
        ref = torch.as_tensor(np.asarray(image_processor(photos[name], return_tensors="np")["pixel_values"][0]))
        assert ours.shape == ref.shape and (ours - ref).abs().max() < 1e-5, name


def _as_png(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _read_back(way, processor, processor_class, tmp_path, photos, interpolation):
    """Save `processor` beside the model in tmp_path/hf the `way` given; the loaded model has its statistics and
    resampling, and makes the processor's pixels."""
    _save_processor(way, processor, processor_class, tmp_path / "hf", tmp_path)
    model = dualtower.load(tmp_path / "hf")
    p = model.cfg.preprocess
    assert p.mean == tuple(processor.image_mean) and p.std == tuple(processor.image_std)
    assert p.interpolation == interpolation
    _same_pixels(model, processor, photos)


@pytest.mark.parametrize("way", ["processor", "image_processor"])
def test_clip_settings_are_read_from_either_file(way, tmp_path, photos):
    import transformers

    config = _hf_config()
    size = config.vision_config.image_size
    _random_hf(config).save_pretrained(tmp_path / "hf")
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": size + 9}, crop_size=size, resample=2,
                                                   image_mean=[0.2, 0.3, 0.4], image_std=[0.5, 0.6, 0.7])
    _read_back(way, processor, transformers.CLIPProcessor, tmp_path, photos, "bilinear")


@pytest.mark.parametrize("way", ["processor", "image_processor"])
def test_siglip_settings_are_read_from_either_file(way, tmp_path, photos):
    import transformers

    text = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(
        tmp_path / "hf")
    processor = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32}, resample=3,
                                                     image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    _read_back(way, processor, transformers.SiglipProcessor, tmp_path, photos, "bicubic")


@pytest.mark.parametrize("way", ["processor", "image_processor"])
def test_siglip2_naflex_settings_are_read_from_either_file(way, tmp_path):
    """The defect users met: a Siglip2Processor saved whole (processor_config.json) lost max_num_patches,
    resample and the statistics, without a word."""
    import transformers
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    from .test_siglip2 import PATCH, _siglip2_config

    torch.manual_seed(0)
    transformers.Siglip2Model(_siglip2_config()).save_pretrained(tmp_path / "hf")
    processor = Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=100, resample=3,
                                         image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    _save_processor(way, processor, transformers.Siglip2Processor, tmp_path / "hf", tmp_path)
    p = dualtower.load(tmp_path / "hf").cfg.preprocess
    assert (p.resize_mode, p.max_patches, p.interpolation) == ("naflex", 100, "bicubic")
    assert p.mean == (0.1, 0.2, 0.3) and p.std == (0.4, 0.5, 0.6)


@pytest.mark.parametrize("way", ["processor", "image_processor"])
def test_internvl_settings_are_read_from_either_file(way, tmp_path):
    import transformers

    torch.manual_seed(0)
    transformers.InternVLVisionModel(_internvl_vision_config(False)).save_pretrained(tmp_path / "hf")
    default = dualtower.load(tmp_path / "hf").cfg.preprocess  # InternVL's fixed preprocessing, none saved
    processor = transformers.GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, resample=2,
                                                      image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    if way == "processor":
        scratch = tmp_path / "scratch"
        processor.save_pretrained(scratch)
        settings = json.loads((scratch / "preprocessor_config.json").read_text())
        # InternVLProcessor also needs a video processor and a chat tokenizer: its file is written as transformers
        # 5 writes every processor, the image processor nested under "image_processor"
        (tmp_path / "hf" / "processor_config.json").write_text(
            json.dumps({"image_processor": settings, "processor_class": "InternVLProcessor"}))
    else:
        processor.save_pretrained(tmp_path / "hf")
    p = dualtower.load(tmp_path / "hf").cfg.preprocess
    assert default.mean != p.mean and p.mean == (0.1, 0.2, 0.3) and p.std == (0.4, 0.5, 0.6)
    assert p.interpolation == "bilinear" and p.image_size == 56


def test_unreadable_or_missing_settings_are_refused_by_name(tmp_path):
    import transformers

    _random_hf(_hf_config()).save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="no image processor settings .processor_config.json or "
                                              "preprocessor_config.json."):
        dualtower.load(tmp_path / "hf")
    (tmp_path / "hf" / "processor_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="processor_config.json"):
        dualtower.load(tmp_path / "hf")
    (tmp_path / "hf" / "processor_config.json").write_text(json.dumps({"image_processor": [1, 2]}))
    with pytest.raises(CheckpointError, match="image_processor is not a JSON object"):
        dualtower.load(tmp_path / "hf")
    (tmp_path / "hf" / "processor_config.json").write_text(json.dumps({"image_processor": {"resample": 0}}))
    with pytest.raises(CheckpointError, match=r"resample 0 .*from processor_config.json \(image_processor\)"):
        dualtower.load(tmp_path / "hf")
    (tmp_path / "hf" / "processor_config.json").write_text(json.dumps({"image_processor": {"image_mean": 5}}))
    with pytest.raises(CheckpointError, match="processor_config.json"):
        dualtower.load(tmp_path / "hf")
    # a text tower needs no image processor
    transformers.CLIPTextModel(_hf_config().text_config).save_pretrained(tmp_path / "text")
    assert dualtower.load(tmp_path / "text").visual is None
