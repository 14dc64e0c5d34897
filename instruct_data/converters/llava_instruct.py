"""LLaVA-Instruct (``llava_instruct_150k.json``, ``llava_v1_5_mix665k.json``): a list of conversations.

Layout: ``[{"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [{"from": "human",
"value": "<image>\\nWhat are the colors of the bus in the image?"}, {"from": "gpt", "value": "..."}]}]``. Entries
without ``image`` are text-only (mix665k has ~40k) and become records without inputs.
"""

from __future__ import annotations

import os

from onellm.instruct_data.converters import base
from onellm.instruct_data.schema import ModalityInput, Record, Turn
from onellm.modalities import marker

IMAGE_TOKEN = "<image>"  # LLaVA's DEFAULT_IMAGE_TOKEN


@base.register_converter("llava_instruct")
def convert(
    instruct_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> base.ConvertReport:
    """LLaVA-Instruct json -> chat records; LLaVA's <image> becomes the image marker (exactly one per image entry).

    Args:
        instruct_json: llava_instruct_150k.json, llava_v1_5_mix665k.json or a file of the same layout.
        media_prefix: folder the 'image' paths are relative to, under the media root.
    """

    def build(entry: dict, entry_id: str, turns: list[Turn]) -> Record:
        found = base.replace_placeholder(turns, IMAGE_TOKEN, marker("image"))
        image = entry.get("image")
        expected = 1 if image else 0
        if found != expected:
            has = f"has image {image!r}" if image else "has no image"
            raise base.Rejected(
                f"entry {has} but its human turns hold {found} {IMAGE_TOKEN} token(s), expected {expected}"
            )
        return Record(
            id=f"llava-{entry_id}",
            inputs=[ModalityInput("image", path=base.media_path(media_prefix, image))] if image else [],
            conversation=turns,
            task="chat",
            meta={"source": "llava_instruct", "source_id": entry_id},
        )

    collector = base.Collector("llava_instruct")
    base.add_conversations(instruct_json, collector, "a LLaVA-Instruct list of conversations", "id", build)
    return collector.write(out_manifest)
