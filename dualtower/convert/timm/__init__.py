"""The timm family: a bare timm VisionTransformer / Eva state dict (`tables`, the format "timm") and timm's hub
layout (`hub`, read only: config.json with architecture and pretrained_cfg)."""

from . import hub  # noqa: F401 (registers timm_hub)
from .tables import export_state_dict, import_state_dict

__all__ = ["export_state_dict", "import_state_dict"]
