"""AudioCaps (``train.csv``, ``val.csv``, ``test.csv``): one caption per row; val/test have five rows per clip.

Layout: header ``audiocap_id,youtube_id,start_time,caption``; a clip is a 10 s AudioSet segment of a YouTube video
starting at ``start_time`` seconds. Rows of the same (youtube_id, start_time) become one record.
"""

from __future__ import annotations

import os

from onellm.instruct_data.converters import base

FIELDS = ("audiocap_id", "youtube_id", "start_time")


@base.register_converter("audiocaps")
def convert(
    captions_csv: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    file_pattern: str = "{youtube_id}.wav",
    each_caption: bool = False,
) -> base.ConvertReport:
    """AudioCaps csv -> one audio caption record per clip (all its captions as references).

    Args:
        captions_csv: train.csv / val.csv / test.csv of AudioCaps.
        media_prefix: folder of the downloaded clips under the media root, e.g. audiocaps/test.
        file_pattern: clip file name; fields {youtube_id}, {start_time}, {audiocap_id} (first row of the clip).
        each_caption: one record per caption (for training) instead of one per clip (for evaluation).
    """
    try:
        file_pattern.format(audiocap_id=0, youtube_id="x", start_time=0)
    except (KeyError, IndexError, ValueError) as exc:
        fields = ", ".join("{" + name + "}" for name in FIELDS)
        raise ValueError(f"file_pattern {file_pattern!r} may only use the fields {fields} ({exc!r})") from None
    collector = base.Collector("audiocaps")
    clips: dict[tuple[str, int], list[tuple[str, dict[str, str]]]] = {}
    for where, row in base.read_csv(captions_csv, (*FIELDS, "caption")):
        start = row["start_time"]
        if not row["youtube_id"] or not start.lstrip("-").isdigit():
            collector.reject(
                where, f"need a youtube_id and an integer start_time, found {row['youtube_id']!r}, {start!r}"
            )
        elif not row["caption"]:
            collector.reject(where, "empty caption")
        else:
            clips.setdefault((row["youtube_id"], int(start)), []).append((where, row))
    for (youtube_id, start), rows in clips.items():
        first_where, first = rows[0]
        name = file_pattern.format(audiocap_id=first["audiocap_id"], youtube_id=youtube_id, start_time=start)
        meta = {
            "source": "audiocaps",
            "youtube_id": youtube_id,
            "start_time": start,
            "audiocap_ids": [row["audiocap_id"] for _, row in rows],
        }
        captions = [row["caption"] for _, row in rows]
        base_id = f"audiocaps-{youtube_id}_{start}"
        base.caption_records(
            collector, base_id, base.media_path(media_prefix, name), captions, first_where, meta, "audio", each_caption
        )
    return collector.write(out_manifest)
