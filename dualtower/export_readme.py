"""The README.md an export folder carries: how to run it without PyTorch (or, for torch-export, with it), its
graphs, and the preprocessing and tokenisation a client in another language must repeat."""

from __future__ import annotations

import math

RUN = {
    "onnx": """Run with ONNX Runtime and no PyTorch: `pip install onnxruntime numpy pillow`, and for the tokenizer and the
image preprocessing `pip install --no-deps dualtower` plus `tokenizers ftfy regex sentencepiece`. Then:

    import dualtower.onnx
    model = dualtower.onnx.load("{name}")
    image_embeds = model.embed_images([PIL.Image.open("cat.jpg")])   # (N, {dim})
    text_embeds = model.embed_texts(["a photo of a cat"])              # (N, {dim})

or `dualtower index PHOTOS --model {name} --runtime onnx`, `dualtower serve ...`.""",
    "openvino": """Run with OpenVINO and no PyTorch: `pip install openvino numpy pillow`, and for the tokenizer and the image
preprocessing `pip install --no-deps dualtower` plus `tokenizers ftfy regex sentencepiece`. Then:

    import dualtower.runtimes
    model = dualtower.runtimes.open("{name}", runtime="openvino")
    image_embeds = model.embed_images([PIL.Image.open("cat.jpg")])   # (N, {dim})
    text_embeds = model.embed_texts(["a photo of a cat"])              # (N, {dim})

or `dualtower index PHOTOS --model {name} --runtime openvino`, `dualtower serve ...`. The `.xml` files are
OpenVINO models (their weights in the `.bin` beside each), read by `openvino.Core().read_model`.""",
    "torch-export": """Run with PyTorch alone (no dualtower model code): `torch.export.load("image.pt2").module()` and likewise
`text.pt2`, or `dualtower.export.load_programs("{name}")`, which checks each archive first and prefers an
AOTInductor package where the export compiled one.""",
}


def text(cfg, name: str, format: str, precision: str, normalize: bool, graphs: dict, ext: str, dynamic: bool) -> str:
    p = cfg.preprocess
    side = p.image_size if p.crop_pct == 1 else math.floor(p.image_size / p.crop_pct)
    left = f"(W - {p.image_size}) // 2" if p.center_crop == "floor" else f"round((W - {p.image_size}) / 2)"
    resize = (f"the shortest side to {side} and the other to floor({side} x long / short), truncated, not rounded "
              f"({p.interpolation}); then the center {p.image_size} x {p.image_size}, its left edge at {left} "
              "for the resized width W (the top likewise)" if p.resize_mode == "shortest" else
              f"to the largest grid of {p.patch_size}-pixel patches of the image's own aspect ratio that holds at "
              f"most {p.max_patches} patches ({p.interpolation}; transformers' Siglip2 image processor does the "
              "same); cut into patches row-major over the grid, each patch's pixels row-major with the channels "
              "last; pad a batch to its longest image, pixel_attention_mask 1 for a patch and 0 for padding, "
              "spatial_shapes each image's (rows, columns)" if p.resize_mode == "naflex" else
              f"both sides to {p.image_size} ({p.interpolation})")
    texts = ("tokenizer.json gives the ids with the `tokenizers` library in any language (equal to ours on plain "
             "text; ours also repairs mojibake and HTML entities with ftfy)" if cfg.tokenizer == "clip-bpe"
             else "the tokenizer files beside the graphs give the ids")
    scaled = "L2-normalised" if normalize else "not normalised (divide each row by its L2 norm before comparing)"
    sized = ", image height and width too" if dynamic else ""
    listing = "".join(f"- `{graph}.{ext}`: `{', '.join(g[2]) if isinstance(g[2], list) else g[2]}` -> `{g[3]}`\n"
                      for graph, g in graphs.items())
    run = RUN[format].format(name=name, dim=cfg.embed_dim)
    return f"""# {cfg.name}, exported by dualtower ({format}, {precision})

{run}

Graphs (batch and text length dynamic{sized}):
{listing}
Image preprocessing, if you write your own: RGB; resize {resize};
scale to 0..1, subtract mean {list(p.mean)}, divide by std {list(p.std)};
channels first, float32. Texts: {texts}. Outputs are {scaled}. config.json holds the model config.

This folder is dualtower's own layout, not a transformers model directory: optimum's `ORTModel.from_pretrained`
expects a config.json with a transformers `model_type` and is not the way to run it.
"""
