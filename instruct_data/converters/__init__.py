"""Converters from public dataset formats to the onellm record schema."""
