"""OneLLM's Ego4D IMU caption evaluation file (``datasets/Eval/imu/imu_2000_cococap.json``, csuhan/OneLLM_Eval).

Layout: COCO captions over IMU windows: ``{"images": [{"id": 0, "file_name": "...", "video_uid": "<ego4d uid>",
"window_start": 12.5, "window_end": 15.0}], "annotations": [{"id": 0, "image_id": 0, "caption": "..."}]}``.
OneLLM's ``eval/imu_cap_ego4d.py`` ignores ``file_name`` and reads ``<IMU_PATH>/<video_uid>.npy`` (Ego4D's IMU
stream, [6, T]: accelerometer xyz + gyroscope xyz) with ``<video_uid>_timestamps.npy`` (milliseconds), cut to
``window_start``..``window_end`` seconds and resampled to 200 Hz. The window is not a file of its own, so the record
points at the whole stream and carries the window in ``meta`` (``window_start``, ``window_end``, ``layout: ego4d``),
the same keys as the IMU entries of ``onellm_instruct``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from onellm.instruct_data.converters.base import (
    Collector,
    ConvertReport,
    caption_records,
    describe_entry,
    load_json,
    media_path,
    register_converter,
    require_keys,
)


def coco_caption_images(
    captions_json: str | os.PathLike, collector: Collector, layout: str, required: tuple[str, ...]
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """A COCO-captions-layout file -> ``(where, image entry, its captions)`` for every image that has the keys
    ``required`` and at least one caption. Orphan or empty captions and images without captions are rejected."""
    data = load_json(captions_json)
    require_keys(data, ("images", "annotations"), captions_json, layout)
    name = Path(captions_json).name
    captions: dict[Any, list[str]] = {}
    known = {image.get("id") for image in data["images"] if isinstance(image, dict)}
    for index, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = describe_entry(name, "annotations", index, ann_id)
        if not isinstance(ann, dict) or ann.get("image_id") not in known:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            collector.reject(where, f"image_id {image_id!r} is not in 'images'")
        elif not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
            collector.reject(where, "empty caption")
        else:
            captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    found = []
    for index, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        where = describe_entry(name, "images", index, image_id)
        missing = [key for key in ("id", *required) if not isinstance(image, dict) or image.get(key) in (None, "")]
        if missing:
            collector.reject(where, f"missing {missing}")
        elif image_id not in captions:
            collector.reject(where, "no captions")
        else:
            found.append((where, image, captions[image_id]))
    return found


def _seconds(value: Any) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return value


@register_converter("ego4d_imu")
def convert(
    captions_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> ConvertReport:
    """OneLLM's Ego4D IMU caption json -> one IMU caption record per window (all its captions as references).

    Args:
        captions_json: imu_2000_cococap.json.
        media_prefix: folder of Ego4D's IMU streams (<video_uid>.npy + <video_uid>_timestamps.npy), e.g. ego4d/imu.
    """
    collector = Collector("ego4d_imu")
    required = ("video_uid", "window_start", "window_end")
    for where, image, captions in coco_caption_images(captions_json, collector, "a COCO-layout IMU file", required):
        start, end = _seconds(image["window_start"]), _seconds(image["window_end"])
        if start is None or end is None or end <= start:
            found = (image["window_start"], image["window_end"])
            collector.reject(where, f"window_start < window_end must be seconds >= 0, found {found}")
            continue
        meta = {
            "source": "ego4d_imu",
            "image_id": image["id"],
            "video_uid": image["video_uid"],
            "window_start": start,
            "window_end": end,
            "layout": "ego4d",
        }
        path = media_path(media_prefix, f"{image['video_uid']}.npy")
        caption_records(collector, f"ego4d-imu-{image['id']}", path, captions, where, meta, "imu")
    return collector.write(out_manifest)
