"""Synthetic 8-modality corpus."""
