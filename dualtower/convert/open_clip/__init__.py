"""The open_clip family: its state dict (`tables`: the key tables, both ways; OpenAI's layout is the same) and its
hub layout (`hub`: open_clip_config.json), as the formats of `formats`."""

from . import formats  # noqa: F401 (registers open_clip, openai, open_clip_hub)
from .tables import check_exportable, export_state_dict, import_state_dict

__all__ = ["check_exportable", "export_state_dict", "import_state_dict"]
