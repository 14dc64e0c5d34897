"""Metrics registered by name."""
