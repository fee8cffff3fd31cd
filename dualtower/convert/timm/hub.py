"""timm's hub layout: a directory with `config.json` ({"architecture", "num_classes", "pretrained_cfg", ...}) and
`model.safetensors` or `pytorch_model.bin` (a bare timm state dict, see `timm_vit`). The architecture is the
registry entry whose vision tower timm's `architecture` builds (`archs.TIMM_NAMES`); `num_classes` sets the
projection (0: none); `pretrained_cfg` sets timm's eval preprocessing (mean, std, interpolation, crop_pct,
crop_mode)."""

from __future__ import annotations

from dataclasses import replace

from ...archs import REGISTRY, TIMM_NAMES
from ...config import ConvNeXtConfig, FastViTConfig, ModelConfig
from ..files import Probe
from ..registry import ReadOnlyFormat, register
from ..remap import ConversionError
from . import tables as timm_vit

_CROP_MODES = {"center": "shortest", "squash": "squash"}
_POOLS = {"token": "cls", "map": "map", "avg": "mean"}


def _apply_model_args(v, args: dict, name: str):
    """timm's `model_args` (the keyword arguments the model was built with) over the architecture's defaults."""
    if args.pop("in_chans", 3) != 3:
        raise ConversionError(f"{name}: model_args in_chans must be 3")
    args.pop("num_classes", None)  # config.json's num_classes decides the projection
    pool = args.pop("global_pool", None)
    if isinstance(v, ConvNeXtConfig):  # the trunk's stages and its head's hidden width
        if pool not in (None, "avg"):
            raise ConversionError(f"{name}: model_args global_pool {pool!r}: a ConvNeXt tower average-pools")
        changes = {key: tuple(args.pop(arg)) if key != "head_hidden" else int(args.pop(arg))
                   for key, arg in (("layers", "depths"), ("dims", "dims"), ("head_hidden", "head_hidden_size"))
                   if arg in args}
        for ignored in ("ls_init_value", "drop_path_rate"):  # the weights' start and training noise: not built
            args.pop(ignored, None)
        return _built(v, changes, args, name, " for a ConvNeXt")
    if isinstance(v, FastViTConfig):  # timm's fastvit_mci*: built as named (folded with inference_mode=True)
        folded = bool(args.pop("inference_mode", False))
        if pool not in (None, "avg") or args:
            raise ConversionError(f"{name}: model_args dualtower does not build for a FastViT: "
                                  f"{sorted(args) or [f'global_pool={pool!r}']}")
        return replace(v, folded=folded)
    if pool is not None and _POOLS.get(pool) != v.pool:
        raise ConversionError(f"{name}: model_args global_pool {pool!r} is not this tower's pooling ({v.pool})")
    size = args.pop("img_size", v.image_size)
    size = size if isinstance(size, int) else (size[0] if len(set(size)) == 1 else None)
    if size is None:
        raise ConversionError(f"{name}: a non-square img_size is not supported")
    width = int(args.pop("embed_dim", v.width))
    ratio = float(args.pop("mlp_ratio", v.mlp_dim / v.width))
    changes = dict(width=width, mlp_dim=int(width * ratio), depth=int(args.pop("depth", v.depth)),
                   heads=int(args.pop("num_heads", v.heads)), patch_size=int(args.pop("patch_size", v.patch_size)),
                   image_size=int(size))
    return _built(v, changes, args, name)


def _built(v, changes: dict, args: dict, name: str, kind: str = ""):
    """The tower with `changes`, once every model_arg was taken: one left over is refused by name."""
    if args:
        raise ConversionError(f"{name}: model_args dualtower does not build{kind}: {sorted(args)}")
    try:
        return replace(v, **changes)
    except ValueError as e:
        raise ConversionError(f"{name}: model_args: {e}") from e


def _candidates(arch, data: dict) -> list[str]:
    """The registry entries whose vision tower timm's `arch` builds, the likeliest first. The CLIP ConvNeXt trunks
    are shared (timm's convnext_base is the trunk of convnext_base, _base_w and _base_w_320; `_mlp` names the MLP
    head of the "_d" models): the entry of the same projection width and image size comes first."""
    trunk, mlp = (arch[: -len("_mlp")], True) if isinstance(arch, str) and arch.endswith("_mlp") else (arch, False)
    found = [a for a, tn in TIMM_NAMES.items() if tn == arch]
    convnext = [a for a, tn in TIMM_NAMES.items() if tn == trunk and isinstance(REGISTRY[a].vision, ConvNeXtConfig)
                and bool(REGISTRY[a].vision.head_hidden) == mlp]
    if not convnext:
        return found
    size = ((data.get("pretrained_cfg") or {}).get("input_size") or [3, 0, 0])[-1]
    return sorted(convnext, key=lambda a: (REGISTRY[a].embed_dim != data.get("num_classes"),
                                           REGISTRY[a].vision.image_size != size))


def config_from_timm(data: dict, name: str) -> ModelConfig:
    arch = data.get("architecture")
    found = _candidates(arch, data)
    if not found:
        known = {*TIMM_NAMES.values(), *(f"{tn}_mlp" for a, tn in TIMM_NAMES.items()
                                         if isinstance(REGISTRY[a].vision, ConvNeXtConfig)
                                         and REGISTRY[a].vision.head_hidden)}
        raise ConversionError(f"{name}: timm architecture {arch!r} is not one dualtower builds; known: "
                              f"{', '.join(sorted(known))}")
    cfg = REGISTRY[found[0]]
    v = _apply_model_args(cfg.vision, dict(data.get("model_args") or {}), name)
    classes = int(data.get("num_classes", cfg.embed_dim if v.head else 0))
    if classes == 0:
        if isinstance(v, ConvNeXtConfig) and v.head_hidden:
            raise ConversionError(f"{name}: num_classes 0 keeps the MLP head's hidden layer, which dualtower does "
                                  "not build without its projection")
        v, embed = replace(v, head=False, head_bias=False), v.width
    else:
        v, embed = replace(v, head=True), classes
    pre = data.get("pretrained_cfg") or {}
    size = pre.get("input_size", [3, v.image_size, v.image_size])
    if list(size[1:]) != [v.image_size, v.image_size]:
        raise ConversionError(f"{name}: pretrained_cfg input_size {size} differs from {arch}'s {v.image_size} px")
    mode = _CROP_MODES.get(pre.get("crop_mode", "center"))
    if mode is None:
        raise ConversionError(f"{name}: pretrained_cfg crop_mode {pre.get('crop_mode')!r} is not built "
                              f"({', '.join(_CROP_MODES)})")
    p = cfg.preprocess
    try:
        preprocess = replace(p, image_size=v.image_size, mean=tuple(pre.get("mean", p.mean)),
                             std=tuple(pre.get("std", p.std)), interpolation=pre.get("interpolation", p.interpolation),
                             resize_mode=mode, crop_pct=float(pre.get("crop_pct", 1.0)), rgb="convert_first")
        return cfg.replace(name=arch, embed_dim=embed, vision=v, text=None, preprocess=preprocess)
    except ValueError as e:
        raise ConversionError(f"{name}: config.json does not describe a tower dualtower can build ({e})") from e


class TimmHub(ReadOnlyFormat):
    name = "timm_hub"
    summary = "timm's hub layout (config.json with architecture and pretrained_cfg, model.safetensors)"
    write_with = "timm"
    vision_only = True

    def detect(self, probe: Probe) -> bool:
        return probe.is_directory and "architecture" in probe.config and "pretrained_cfg" in probe.config

    def read_config(self, probe: Probe, arch: str | None) -> ModelConfig:
        return config_from_timm(probe.config, str(probe.path))

    to_ours = staticmethod(timm_vit.import_state_dict)


FORMAT = register(TimmHub())
