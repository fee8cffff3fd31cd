from .remap import ConversionError

__all__ = ["ConversionError"]
