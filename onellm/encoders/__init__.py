"""Universal encoder adapters for HF vision transformers."""
