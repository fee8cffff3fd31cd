"""Foreign checkpoint formats, in and out, through one registry (`registry.FORMATS`).

    load(path, arch=None, source=None, towers=None) -> DualEncoder
    export(model, dst, to="dualtower")
    convert(src, dst, arch=None, to="dualtower", source=None, towers=None)

Each format is one registered `Format` object. A format family is one package holding all its containers:
open_clip/ (its state dict, OpenAI's, and open_clip's hub layout), timm/ (a bare timm state dict and timm's hub
layout), internvl/ (InternVL's own layout and transformers'); ours, hf_clip and hf_siglip are one module each.
`remap` holds the shared key-table code (each table is written one way and read both ways), `files` the safe
reading and writing of state dicts. `dualtower.hub` fetches a repo's files and names the format they are in.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import hub, rundir
from ..checkpoint import CheckpointError, build, empty_model
from ..errors import NotFound, UserError
from ..origin import Origin
from . import hf_clip, hf_siglip, internvl, open_clip, ours, timm  # noqa: F401 (they register their formats)
from .files import Probe, read_state_file
from .registry import FORMATS, detect, get_format, names, writer_for
from .remap import ConversionError

TOWERS = ("both", "vision", "text")


def _missing(spec: str) -> str:
    """What to say of a --model that is not a path: and where it looks like a name, the closest known names."""
    message = f"{spec}: no such file or directory"
    if os.sep in spec or Path(spec).suffix:
        return message
    from ..archs import REGISTRY, closest

    near = closest(spec, [*hub.KNOWN, *REGISTRY])
    return (f"{message}, and not a name from `dualtower models` nor an architecture"
            + (f" (closest: {', '.join(near)})" if near else ""))


def load(path: "str | os.PathLike", arch: str | None = None, source: str | None = None,
         towers: str | None = None):
    """A model from any registered format, from a local path or the Hub (`hf-hub:ORG/NAME[@REVISION]` or a short
    name of `hub.KNOWN`). `source` names the format (otherwise it is detected); `arch` names the
    architecture of a bare state dict; `towers="vision"` or `"text"` keeps only that tower (tower-only formats
    such as timm's and InternViT's, or transformers' CLIPTextModel, always load that way)."""
    if towers is not None and towers not in TOWERS:
        raise UserError(f"towers={towers!r}: expected one of {TOWERS}")
    name, spec, tokenizer_dir = None, str(path), None
    if hub.is_hub_name(path) and not os.path.exists(path):  # hf-hub:ORG/NAME[@REV] or a known short name
        name = str(path).removeprefix(hub.PREFIX)
        path, layout, tokenizer_dir = hub.fetch(path)
        source = source or layout
    given = str(path)
    path = rundir.resolve(Path(path))  # (puts back a checkpoint a killed save left aside)
    if not path.exists():
        raise NotFound(_missing(given))
    probe = Probe.of(path)
    fmt = get_format(source) if source else detect(probe)
    try:
        cfg = fmt.read_config(probe, arch)
        cfg = cfg if name is None else cfg.replace(name=name)  # a snapshot's folder is a commit hash: name the repo
        for tower, missing in (("text", cfg.text is None), ("vision", cfg.vision is None)):
            if missing and towers in ("both", tower):
                other = "vision" if tower == "text" else "text"
                raise CheckpointError(f"{path}: a {fmt.name} checkpoint holds no {tower} tower; load it with "
                                      f"towers={other!r}")
        state = fmt.to_ours(fmt.read_state(probe, cfg), cfg, set(empty_model(cfg).state_dict()), str(path))
    except ConversionError as e:
        raise CheckpointError(str(e)) from e
    if towers in ("vision", "text") and (cfg.vision is not None and cfg.text is not None):
        cfg = cfg.replace(text=None) if towers == "vision" else cfg.replace(vision=None)
        keep = "visual." if towers == "vision" else "text."
        state = {k: v for k, v in state.items() if k.startswith(keep)}
    model = build(cfg, state, str(path))
    model.origin = Origin.of_folder(path, fmt.name, source=spec)
    if tokenizer_dir is not None:  # named by the model's config, fetched from its own repo
        model.origin = model.origin.replace(tokenizer_dir=tokenizer_dir)
    return model


def export(model, dst: "str | os.PathLike", to: str = "dualtower") -> None:
    """Write `model` in format `to` (a registry name, or "hf" for the transformers class that fits it)."""
    try:
        writer_for(to, model.cfg).write(model, Path(dst))
    except ConversionError as e:
        raise CheckpointError(str(e)) from e


def convert(src: "str | os.PathLike", dst: "str | os.PathLike", arch: str | None = None, to: str = "dualtower",
            source: str | None = None, towers: str | None = None):
    model = load(src, arch=arch, source=source, towers=towers)
    export(model, dst, to)
    return model


__all__ = ["FORMATS", "ConversionError", "Probe", "convert", "detect", "export", "get_format", "load", "names",
           "read_state_file"]
