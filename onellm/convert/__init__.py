"""Converters from other projects' checkpoints to onellm HF checkpoint folders, one module per source layout.

- :mod:`onellm.convert.official`: the released OneLLM weights (``consolidated.00-of-01.pth``, keys ``llma.*``).

``onellm convert <source> ...`` (:mod:`onellm.convert.cli`) runs them.
"""
