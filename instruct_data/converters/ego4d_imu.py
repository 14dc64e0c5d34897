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
from typing import Any

from onellm.instruct_data.converters import base


def _seconds(value: Any) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return value


@base.register_converter("ego4d_imu")
def convert(
    captions_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> base.ConvertReport:
    """OneLLM's Ego4D IMU caption json -> one IMU caption record per window (all its captions as references).

    Args:
        captions_json: imu_2000_cococap.json.
        media_prefix: folder of Ego4D's IMU streams (<video_uid>.npy + <video_uid>_timestamps.npy), e.g. ego4d/imu.
    """
    collector = base.Collector("ego4d_imu")
    required = ("video_uid", "window_start", "window_end")
    for where, image, captions in base.coco_caption_images(
        captions_json, collector, "a COCO-layout IMU file", required
    ):
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
        path = base.media_path(media_prefix, f"{image['video_uid']}.npy")
        base.caption_records(collector, f"ego4d-imu-{image['id']}", path, captions, where, meta, "imu")
    return collector.write(out_manifest)
