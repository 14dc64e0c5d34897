"""Clotho captions (``clotho_captions_{development,validation,evaluation}.csv``): five captions per audio file.

Layout: header ``file_name,caption_1,caption_2,caption_3,caption_4,caption_5``; file names may hold spaces and
captions commas (quoted).
"""

from __future__ import annotations

import os

from onellm.instruct_data.converters import base

CAPTION_COLUMNS = tuple(f"caption_{k}" for k in range(1, 6))


@base.register_converter("clotho")
def convert(
    captions_csv: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    each_caption: bool = False,
) -> base.ConvertReport:
    """Clotho captions csv -> one audio caption record per file (the five captions as references).

    Args:
        captions_csv: clotho_captions_development.csv / _validation.csv / _evaluation.csv.
        media_prefix: folder of the .wav files under the media root, e.g. clotho/evaluation.
        each_caption: one record per caption (for training) instead of one per file (for evaluation).
    """
    collector = base.Collector("clotho")
    for where, row in base.read_csv(captions_csv, ("file_name", *CAPTION_COLUMNS)):
        captions = [row[column] for column in CAPTION_COLUMNS if row[column]]
        if not row["file_name"]:
            collector.reject(where, "empty file_name")
        elif not captions:
            collector.reject(where, "all five captions are empty")
        else:
            meta = {"source": "clotho", "file_name": row["file_name"]}
            path = base.media_path(media_prefix, row["file_name"])
            base.caption_records(
                collector, f"clotho-{row['file_name']}", path, captions, where, meta, "audio", each_caption
            )
    return collector.write(out_manifest)
