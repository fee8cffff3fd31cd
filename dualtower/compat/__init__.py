"""Other codebases' model contracts over our models: clip_benchmark.py (CLIP_benchmark's loader and model type
"dualtower"), open_clip.py (open_clip's model interface and dict output, for open_clip_train's zero-shot)."""
