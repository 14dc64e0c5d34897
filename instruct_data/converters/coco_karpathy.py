"""COCO Karpathy split file (``dataset_coco.json``): images with their split and tokenised + raw sentences.

Layout: ``{"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
"imgid": 0, "split": "test", "cocoid": 391895, "sentids": [...], "sentences": [{"raw": "...", "tokens": [...],
"imgid": 0, "sentid": 0}]}]}``; splits are train / restval / val / test (5000 test images).
"""

from __future__ import annotations

import os
from pathlib import Path

from onellm.instruct_data.converters import base

KARPATHY_SPLITS = ("train", "restval", "val", "test")


@base.register_converter("coco_karpathy")
def convert(
    dataset_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    splits: str = "test",
    each_caption: bool = False,
) -> base.ConvertReport:
    """Karpathy dataset_coco.json -> caption records of the chosen splits (image path = filepath/filename).

    Args:
        dataset_json: dataset_coco.json from Karpathy's split release.
        media_prefix: folder holding train2014/ and val2014/ under the media root, e.g. coco.
        splits: comma-separated Karpathy splits to keep (train,restval,val,test); training usually takes train,restval.
        each_caption: one record per caption (for training) instead of one per image (for evaluation).
    """
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in KARPATHY_SPLITS]
    if unknown or not wanted:
        raise ValueError(f"splits {splits!r}: unknown {unknown or 'empty'}; choose from {', '.join(KARPATHY_SPLITS)}")
    data = base.load_json(dataset_json)
    base.require_keys(data, ("images",), dataset_json, "a Karpathy split file")
    name = Path(dataset_json).name
    collector = base.Collector("coco_karpathy")
    for index, image in enumerate(data["images"]):
        image_id = image.get("cocoid", image.get("imgid")) if isinstance(image, dict) else None
        where = base.describe_entry(name, "images", index, image_id)
        if not isinstance(image, dict) or not image.get("filename") or image_id is None:
            collector.reject(where, "missing filename or cocoid/imgid")
            continue
        if image.get("split") not in wanted:
            collector.skip(f"split {image.get('split')!r} not in {wanted}")
            continue
        sentences = image.get("sentences") or []
        captions = [s["raw"].strip() for s in sentences if isinstance(s, dict) and str(s.get("raw", "")).strip()]
        if not captions:
            collector.reject(where, "no sentences with a 'raw' caption")
            continue
        path = base.media_path(media_prefix, "/".join(filter(None, [image.get("filepath", ""), image["filename"]])))
        meta = {"source": "coco_karpathy", "image_id": image_id, "split": image["split"]}
        base.caption_records(collector, f"coco-{image_id}", path, captions, where, meta, "image", each_caption)
    return collector.write(out_manifest)
