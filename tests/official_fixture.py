"""The official OneLLM parity fixture (issue 13) for tests: where it is, and its conversion with a stand-in tokenizer.

The folder comes from ``ONELLM_OFFICIAL_FIXTURE`` (default ``../shared/fixtures/onellm_official`` beside the
repository); :data:`AVAILABLE` is False when it is absent (the tests that need it skip, saying where they looked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ONELLM_OFFICIAL_FIXTURE", REPO.parent / "shared/fixtures/onellm_official"))
AVAILABLE = (FIXTURE / "manifest.json").is_file()
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text()) if AVAILABLE else {}
SKIP_REASON = f"no official parity fixture at {FIXTURE} (set ONELLM_OFFICIAL_FIXTURE)"


def stand_in_tokenizer(folder: Path, size: int | None = None) -> Path:
    """A word-level tokenizer of the fixture's vocabulary size with LLaMA's special ids (LLaMA-2's tokenizer.model is
    not shipped): ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    size = size or MANIFEST["config"]["llm"]["vocab_size"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return folder


def constants() -> dict[str, int]:
    """The official constants the weights cannot tell, as this fixture patched them (converter keyword arguments)."""
    return {
        "clip_head_width": MANIFEST["config"]["clip"]["head_width"],
        "expert_heads": MANIFEST["config"]["upm"]["expert_heads"],
    }


def convert_fixture(root: Path, **options) -> tuple[Path, dict]:
    """Convert the fixture's weights into ``root/converted`` -> (folder, summary)."""
    from onellm.convert.official import convert_official

    out = root / "converted"
    summary = convert_official(
        FIXTURE / "weights.safetensors", FIXTURE / "params.json", out, tokenizer=stand_in_tokenizer(root / "tokenizer"),
        **constants(), **options,
    )
    return out, summary
