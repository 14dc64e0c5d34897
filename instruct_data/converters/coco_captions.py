"""COCO captions (``annotations/captions_{train,val}2014.json``): ``images`` + ``annotations`` lists.

Layout: ``{"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}],
"annotations": [{"id": 770337, "image_id": 391895, "caption": "A man with a red helmet ..."}]}``.
"""

from __future__ import annotations

import os

from onellm.instruct_data.converters import base


@base.register_converter("coco_captions")
def convert(
    captions_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    each_caption: bool = False,
) -> base.ConvertReport:
    """COCO captions json -> one caption record per image (all its captions as references).

    Args:
        captions_json: captions_train2014.json / captions_val2014.json (or the 2017 files).
        media_prefix: folder of the images under the media root, e.g. coco/val2014.
        each_caption: one record per caption (for training) instead of one per image (for evaluation).
    """
    collector = base.Collector("coco_captions")
    for where, image, captions in base.coco_caption_images(
        captions_json, collector, "a COCO captions file", ("file_name",)
    ):
        meta = {"source": "coco_captions", "image_id": image["id"]}
        path = base.media_path(media_prefix, image["file_name"])
        base.caption_records(collector, f"coco-{image['id']}", path, captions, where, meta, "image", each_caption)
    return collector.write(out_manifest)
