"""OneLLM's instruction-tuning json (``datasets/InstructionTuning/<modality>/*.json``, csuhan/OneLLM_InstructionTuning).

Layout: a list (or JSONL) of ``{"id": ..., "image": "<media path>", "conversations": [{"from": "human", "value":
"..."}, {"from": "gpt", "value": "..."}]}``. The modality is not in the entries: OneLLM assigns it per file
(``DATASETS`` in its ``data/finetune_dataset.py``), so it is a required option here. Whatever the modality, the media
path is under ``image``, except:

- ``rgbd`` / ``rgbn`` (depth / normal): ``image`` is the RGB picture, ``depth_image`` / ``normal_image`` the map;
- ``imu``: ``imu_path`` (folder) + ``video_uid`` -> ``<imu_path>/<video_uid>.npy`` (Ego4D, [6, T], with a
  ``<uid>_timestamps.npy``), cropped to ``window_start``..``window_end`` seconds (kept in ``meta``);
- ``text``: no media.

OneLLM strips ``<image>`` from the turns and puts the modality before the first turn; we do the same with the
modality marker.
"""

from __future__ import annotations

import os
from typing import Any

from onellm.instruct_data.converters import base
from onellm.instruct_data.schema import ModalityInput, Record, Turn
from onellm.modalities import marker, modality_names

IMAGE_TOKEN = "<image>"  # OneLLM's DEFAULT_IMAGE_TOKEN, removed from every turn
ALIASES = {"rgbd": "depth", "rgbn": "normal"}  # OneLLM's data_type names
MAP_KEYS = {"depth": "depth_image", "normal": "normal_image"}


def _input(modality: str, entry: dict[str, Any], prefix: str) -> tuple[ModalityInput, dict[str, Any]]:
    """The modality input of one entry and the extra meta it needs; :class:`Rejected` when a key is missing."""
    if modality == "imu":
        missing = [key for key in ("imu_path", "video_uid", "window_start", "window_end") if key not in entry]
        if missing:
            raise base.Rejected(f"imu entry lacks {missing}")
        path = base.media_path(prefix, f"{str(entry['imu_path']).rstrip('/')}/{entry['video_uid']}.npy")
        window = {"window_start": entry["window_start"], "window_end": entry["window_end"], "layout": "ego4d"}
        return ModalityInput("imu", path=path), window
    if not entry.get("image"):
        raise base.Rejected(f"{modality} entry lacks 'image'")
    if modality in MAP_KEYS:
        key = MAP_KEYS[modality]
        if not entry.get(key):
            raise base.Rejected(f"{modality} entry lacks '{key}'")
        rgb = base.media_path(prefix, entry["image"])
        return ModalityInput(modality, path=base.media_path(prefix, entry[key]), rgb_path=rgb), {}
    return ModalityInput(modality, path=base.media_path(prefix, entry["image"])), {}


@base.register_converter("onellm_instruct")
def convert(
    instruct_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    modality: str,
    media_prefix: str = "",
) -> base.ConvertReport:
    """OneLLM instruction json -> chat records with one input of the given modality (none for 'text').

    Args:
        instruct_json: e.g. InstructionTuning/audio/audiocap_train.json (a .jsonl of the same entries also works).
        modality: the file's modality: a onellm modality name, OneLLM's rgbd / rgbn, or text.
        media_prefix: the folder OneLLM's paths are relative to (usually the folder holding datasets/).
    """
    target = ALIASES.get(modality, modality)
    if target != "text" and target not in modality_names():
        raise ValueError(f"modality {modality!r} is not text, rgbd, rgbn or one of {', '.join(modality_names())}")
    collector = base.Collector("onellm_instruct")
    placeholders = [IMAGE_TOKEN] + ([marker(target)] if target != "text" else [])

    def build(entry: dict, entry_id: Any, turns: list[Turn]) -> Record:
        for turn in turns:
            for token in placeholders:
                turn.content = turn.content.replace(token, "")
            turn.content = turn.content.strip()
        inputs, extra = [], {}
        if target != "text":
            item, extra = _input(target, entry, media_prefix)
            inputs = [item]
            turns[0].content = f"{marker(target)}\n{turns[0].content}"
        return Record(
            id=collector.unique_id(f"onellm-{modality}-{entry_id}"),  # ids repeat across QA entries of one clip
            inputs=inputs,
            conversation=turns,
            task="chat",
            meta={"source": "onellm_instruct", "source_id": entry_id, **extra},
        )

    base.add_conversations(instruct_json, collector, "a OneLLM instruction list", "id", build, index_if_missing=True)
    return collector.write(out_manifest)
