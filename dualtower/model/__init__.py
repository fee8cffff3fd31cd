from .dual_encoder import DualEncoder, DualEncoderOutput
from .towers import TextTower, VisionTower

__all__ = ["DualEncoder", "DualEncoderOutput", "TextTower", "VisionTower"]
