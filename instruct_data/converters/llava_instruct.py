"""LLaVA-Instruct (``llava_instruct_150k.json``, ``llava_v1_5_mix665k.json``): a list of conversations.

Layout: ``[{"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [{"from": "human",
"value": "<image>\\nWhat are the colors of the bus in the image?"}, {"from": "gpt", "value": "..."}]}]``. Entries
without ``image`` are text-only (mix665k has ~40k) and become records without inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from onellm.instruct_data.converters.base import (
    Collector,
    ConvertReport,
    Rejected,
    describe_entry,
    load_json,
    media_path,
    register_converter,
    replace_placeholder,
    require_list,
    source_turns,
)
from onellm.instruct_data.schema import ModalityInput, Record
from onellm.modalities import marker

IMAGE_TOKEN = "<image>"  # LLaVA's DEFAULT_IMAGE_TOKEN


@register_converter("llava_instruct")
def convert(
    instruct_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> ConvertReport:
    """LLaVA-Instruct json -> chat records; LLaVA's <image> becomes the image marker (exactly one per image entry).

    Args:
        instruct_json: llava_instruct_150k.json, llava_v1_5_mix665k.json or a file of the same layout.
        media_prefix: folder the 'image' paths are relative to, under the media root.
    """
    entries = require_list(load_json(instruct_json), instruct_json, "a LLaVA-Instruct list of conversations")
    name = Path(instruct_json).name
    collector = Collector("llava_instruct")
    for index, entry in enumerate(entries):
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        where = describe_entry(name, "entries", index, entry_id)
        try:
            if not isinstance(entry, dict) or entry_id is None:
                raise Rejected("entry needs an 'id' and 'conversations'")
            turns = source_turns(entry.get("conversations"))
            found = replace_placeholder(turns, IMAGE_TOKEN, marker("image"))
            image = entry.get("image")
            expected = 1 if image else 0
            if found != expected:
                has = f"has image {image!r}" if image else "has no image"
                raise Rejected(
                    f"entry {has} but its human turns hold {found} {IMAGE_TOKEN} token(s), expected {expected}"
                )
        except Rejected as exc:
            collector.reject(where, str(exc))
            continue
        inputs = [ModalityInput("image", path=media_path(media_prefix, image))] if image else []
        record = Record(
            id=f"llava-{entry_id}",
            inputs=inputs,
            conversation=turns,
            task="chat",
            meta={"source": "llava_instruct", "source_id": entry_id},
        )
        collector.add(record, where)
    return collector.write(out_manifest)
