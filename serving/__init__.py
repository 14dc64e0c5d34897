"""Serving: vLLM plugin and OpenAI-compatible server."""
