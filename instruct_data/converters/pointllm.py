"""PointLLM instruction data (``PointLLM_brief_description_660K*.json``, ``PointLLM_complex_instruction_70K.json``).

Layout: ``[{"object_id": "<objaverse uid>", "conversation_type": "simple_description" | "detailed_description" |
"single_round" | "multi_round", "conversations": [{"from": "human", "value": "<point>\\nWhat is this?"},
{"from": "gpt", "value": "..."}]}]``; point clouds are ``8192_npy/<object_id>_8192.npy`` ([8192, 6] xyz + rgb).
"""

from __future__ import annotations

import os

from onellm.instruct_data.converters import base
from onellm.instruct_data.schema import ModalityInput, Record, Turn
from onellm.modalities import marker

POINT_TOKEN = "<point>"  # PointLLM's point_indicator


@base.register_converter("pointllm")
def convert(
    conversation_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    file_pattern: str = "{object_id}_8192.npy",
) -> base.ConvertReport:
    """PointLLM conversation json -> point records (brief descriptions as captions, the rest as chat).

    Args:
        conversation_json: PointLLM_brief_description_660K_filtered.json or PointLLM_complex_instruction_70K.json.
        media_prefix: folder of the point files under the media root, e.g. pointllm/8192_npy.
        file_pattern: point file name; field {object_id}.
    """
    collector = base.Collector("pointllm")

    def build(entry: dict, object_id: str, turns: list[Turn]) -> Record:
        found = base.replace_placeholder(turns, POINT_TOKEN, marker("point"))
        if found != 1:
            raise base.Rejected(f"human turns hold {found} {POINT_TOKEN} token(s), expected 1")
        kind = entry.get("conversation_type", "simple_description")  # PointLLM's own default
        brief = kind == "simple_description" and len(turns) == 2
        return Record(
            id=collector.unique_id(f"pointllm-{object_id}"),  # one object has several conversations
            inputs=[
                ModalityInput("point", path=base.media_path(media_prefix, file_pattern.format(object_id=object_id)))
            ],
            conversation=turns,
            task="caption" if brief else "chat",
            references=[turns[-1].content] if brief else None,
            meta={"source": "pointllm", "object_id": object_id, "conversation_type": kind},
        )

    base.add_conversations(conversation_json, collector, "a PointLLM list of conversations", "object_id", build)
    return collector.write(out_manifest)
