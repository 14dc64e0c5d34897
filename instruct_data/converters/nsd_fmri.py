"""OneLLM's NSD fMRI caption evaluation file (``datasets/Eval/fmri/fmri_eval_cococap.json``, csuhan/OneLLM_Eval).

Layout: COCO captions over fMRI recordings: ``{"images": [{"id": 0, "file_name": "<path>.npy"}], "annotations":
[{"id": 0, "image_id": 0, "caption": "..."}]}``; the captions are the COCO captions of the picture the subject saw.
Each ``file_name`` is a .npy of the repeated trials of one stimulus, [R, V] (NSD subject 1, V = 15724
visual-cortex voxels); OneLLM's ``eval/fmri_cap_nsd.py`` averages the trials (``mean(axis=0)``) into one vector.
"""

from __future__ import annotations

import os

from onellm.instruct_data.converters import base


@base.register_converter("nsd_fmri")
def convert(
    captions_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> base.ConvertReport:
    """OneLLM's NSD fMRI caption json -> one fMRI caption record per stimulus (all its captions as references).

    Args:
        captions_json: fmri_eval_cococap.json.
        media_prefix: folder the file_name paths are relative to (empty: the dataset folder).
    """
    collector = base.Collector("nsd_fmri")
    images = base.coco_caption_images(captions_json, collector, "a COCO-layout fMRI file", ("file_name",))
    for where, image, captions in images:
        meta = {"source": "nsd_fmri", "image_id": image["id"]}
        path = base.media_path(media_prefix, str(image["file_name"]))
        base.caption_records(collector, f"nsd-fmri-{image['id']}", path, captions, where, meta, "fmri")
    return collector.write(out_manifest)
