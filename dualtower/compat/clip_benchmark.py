"""CLIP_benchmark's model contract: a loader returning (model, image transform, tokenizer), where the model has
`encode_image` and `encode_text`. `register()` adds it to CLIP_benchmark as model type "dualtower".

CLIP_benchmark's own command line, with that model type added:

    python -m dualtower.compat.clip_benchmark eval --model_type dualtower --model ARCH --pretrained CHECKPOINT \
        --dataset wds/NAME --dataset_root DIR ...

(`clip_benchmark` itself cannot know the type: it builds its choices before any plugin could add one.)
"""

from __future__ import annotations

import torch


def load_dualtower(model_name: str, pretrained: str | None = None, cache_dir: str | None = None,
                   device: "str | torch.device" = "cpu"):
    """`pretrained`: anything `dualtower.load` reads (with `model_name` as the architecture of a bare state
    dict); empty: a randomly initialised `model_name`."""
    import dualtower

    model = (dualtower.load(pretrained, arch=model_name or None) if pretrained
             else dualtower.create_model(model_name))
    model = model.to(device).eval()
    return model, dualtower.get_transform(model), dualtower.get_tokenizer(model)


def register() -> None:
    import clip_benchmark.models as models

    models.TYPE2FUNC["dualtower"] = load_dualtower
    if "dualtower" not in models.MODEL_TYPES:
        models.MODEL_TYPES.append("dualtower")


def main(argv: list[str] | None = None) -> None:
    """CLIP_benchmark's command line (`clip_benchmark.cli.main`) with model type "dualtower" registered."""
    import sys

    from clip_benchmark import cli

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli.main()


if __name__ == "__main__":
    main()
