"""The model: layers (block parts, one Transformer for both towers), towers (embed -> transformer -> pool ->
project), the dual encoder, training noise keyed per sample (noise) and the seeds a run derives (seeds)."""

from .dual_encoder import DualEncoder, DualEncoderOutput
from .towers import TextTower, VisionTower

__all__ = ["DualEncoder", "DualEncoderOutput", "TextTower", "VisionTower"]
