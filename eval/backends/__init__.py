"""Generation backends for evaluation."""
