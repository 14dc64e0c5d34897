"""Modality contracts (one file per modality), registered by name."""
