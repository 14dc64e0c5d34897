"""onellm: align every modality with a language model."""
