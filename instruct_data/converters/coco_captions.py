"""COCO captions (``annotations/captions_{train,val}2014.json``): ``images`` + ``annotations`` lists.

Layout: ``{"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}],
"annotations": [{"id": 770337, "image_id": 391895, "caption": "A man with a red helmet ..."}]}``.
"""

from __future__ import annotations

import os
from pathlib import Path

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


@register_converter("coco_captions")
def convert(
    captions_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    each_caption: bool = False,
) -> ConvertReport:
    """COCO captions json -> one caption record per image (all its captions as references).

    Args:
        captions_json: captions_train2014.json / captions_val2014.json (or the 2017 files).
        media_prefix: folder of the images under the media root, e.g. coco/val2014.
        each_caption: one record per caption (for training) instead of one per image (for evaluation).
    """
    data = load_json(captions_json)
    require_keys(data, ("images", "annotations"), captions_json, "a COCO captions file")
    name = Path(captions_json).name
    collector = Collector("coco_captions")
    captions: dict[int, list[str]] = {}
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
    for index, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        where = describe_entry(name, "images", index, image_id)
        if not isinstance(image, dict) or not image.get("file_name"):
            collector.reject(where, "missing file_name")
        elif image_id not in captions:
            collector.reject(where, "no captions")
        else:
            meta = {"source": "coco_captions", "image_id": image_id}
            path = media_path(media_prefix, image["file_name"])
            caption_records(collector, f"coco-{image_id}", path, captions[image_id], where, meta, "image", each_caption)
    return collector.write(out_manifest)
