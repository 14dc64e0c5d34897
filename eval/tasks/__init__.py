"""Task YAMLs (data, not code)."""
