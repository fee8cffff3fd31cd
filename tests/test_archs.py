"""Every registered architecture, swept: it builds (on the meta device, so the largest cost nothing), its config
round-trips through JSON, and its weights' key set goes to every format that can hold it and comes back to ours.
The table's views (REGISTRY, TIMM_NAMES, the open_clip name lists, hub.KNOWN) agree with it."""

from __future__ import annotations

import json

import pytest
import torch

from dualtower import archs, families, hub
from dualtower.config import ModelConfig
from dualtower.convert.registry import FORMATS
from dualtower.model import DualEncoder

NAMES = sorted(archs.ARCHS)


def _meta_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(DualEncoder(cfg).state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_every_architecture_builds_round_trips_and_goes_to_every_format_that_holds_it(name):
    cfg = archs.get_config(name)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    ours = _meta_state(cfg)
    assert ours and all(t.is_meta for t in ours.values())
    written = 0
    for fmt in FORMATS.values():
        if fmt.can_write(cfg) is not None:
            continue
        try:
            theirs = fmt.from_ours(ours, cfg)
        except NotImplementedError:  # a directory format writes through its own writer (hf_files), tested elsewhere
            continue
        target = cfg.replace(text=None) if fmt.vision_only else cfg
        expected = {k for k in ours if not (fmt.vision_only and k.startswith(("text.", "logit_")))}
        back = fmt.to_ours(theirs, target, set(_meta_state(target)), f"{name} as {fmt.name}")
        assert set(back) == expected, (fmt.name, sorted(set(back) ^ expected)[:5])
        for key, tensor in back.items():
            assert tuple(tensor.shape) == tuple(ours[key].shape), (fmt.name, key)
        written += 1
    assert written >= 1, f"{name}: no format holds it"


def test_the_views_are_the_table():
    assert set(archs.REGISTRY) == set(NAMES)
    assert all(archs.REGISTRY[n] is a.config for n, a in archs.ARCHS.items())
    assert archs.TIMM_NAMES == {n: a.timm for n, a in archs.ARCHS.items() if a.timm}
    assert set(archs.OPENCLIP_NAMES) | set(archs.OPENCLIP_TIMM_NAMES) == {n for n, a in archs.ARCHS.items()
                                                                            if a.open_clip}
    assert {k: (v.repo, v.layout, v.arch) for k, v in hub.KNOWN.items()} == {
        p.name: (p.repo, p.layout, n) for n, a in archs.ARCHS.items() for p in a.pretrained}
    for known in hub.KNOWN.values():
        assert known.layout in FORMATS and known.arch in archs.REGISTRY
    widths = {size[0] for size in families.VISION_SIZES.values()}
    for name in archs.OPENCLIP_NAMES:  # open_clip's own ViTs: a decoded size, a text tower as wide as the embedding
        cfg = archs.REGISTRY[name]
        assert cfg.vision.width in widths, name
        if archs.ARCHS[name].hf_text is None:  # (a transformers encoder has its own width: multilingual CLIP)
            assert cfg.text.width == cfg.embed_dim == 64 * cfg.text.heads, name
