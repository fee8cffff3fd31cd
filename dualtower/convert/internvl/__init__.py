"""The InternVL family: InternVL's own layout (`tables`: InternViT and InternVL-C's image side, the format
"internvl") and transformers' InternVL layout (`hf`: "hf-internvl"), sharing one key table per layout."""

from . import hf  # noqa: F401 (registers hf-internvl)
from .tables import config_from_hf, export_state_dict, import_state_dict

__all__ = ["config_from_hf", "export_state_dict", "import_state_dict"]
