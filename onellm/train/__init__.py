"""Training recipes: stages, curriculum, loop."""
