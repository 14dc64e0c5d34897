"""Multimodal instruction data: record schema, loaders, synthetic corpus, converters, collator."""
