"""The checkpoint formats by name, without torch (what `dualtower convert --help` lists). Their code is in
`convert/` (one registered Format each); a test keeps this catalog and that registry equal."""

from __future__ import annotations

# name -> a note for the help ("" where the name says enough); in the order the help lists them
FORMATS = {
    "dualtower": "", "open_clip": "", "openai": "written for QuickGELU models only", "timm": "", "internvl": "",
    "hf-clip": "", "hf-metaclip2": "", "hf-siglip": "", "hf-siglip2": "", "hf-internvl": "",
}
DETECTED_ONLY = ("open_clip_hub", "timm_hub")  # hub layouts: read when detected, written by --to open_clip / timm


def listing() -> str:
    """"dualtower, open_clip, openai (written for QuickGELU models only), ...": the formats for a help text."""
    return ", ".join(f"{name} ({note})" if note else name for name, note in FORMATS.items())
