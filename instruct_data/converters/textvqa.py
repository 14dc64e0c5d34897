"""TextVQA (textvqa.org, ``TextVQA_0.5.1_{train,val}.json``): questions about text in Open Images pictures.

Layout: ``{"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [{"question":
"what is the brand of phone?", "image_id": "0054c91397f2fe05", "question_id": 34602, "answers": ["nokia", ... 10],
"image_classes": [...], "flickr_original_url": "...", "flickr_300k_url": "...", "image_width": 1024,
"image_height": 730, "question_tokens": [...], "set_name": "val"}]}``. Images: ``train_images/<image_id>.jpg``
(train_val_images.zip holds the validation images too). The 10 answers are kept as references for VQA accuracy;
the target is the most frequent one. The test file has no ``answers``; its entries are rejected.
"""

from __future__ import annotations

import os
from pathlib import Path

from onellm.instruct_data.converters import base
from onellm.instruct_data.schema import ModalityInput


@base.register_converter("textvqa")
def convert(
    textvqa_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> base.ConvertReport:
    """TextVQA json -> image QA records (answer = most frequent, references = the 10 answers).

    Args:
        textvqa_json: TextVQA_0.5.1_val.json (or _train.json).
        media_prefix: folder of the images under the media root, e.g. textvqa/train_images.
    """
    data = base.load_json(textvqa_json)
    base.require_keys(data, ("data",), textvqa_json, "a TextVQA file")
    name = Path(textvqa_json).name
    collector = base.Collector("textvqa")
    for index, entry in enumerate(data["data"]):
        qid = entry.get("question_id") if isinstance(entry, dict) else None
        where = base.describe_entry(name, "data", index, qid)
        if not isinstance(entry, dict) or qid is None:
            collector.reject(where, "entry must be an object with a 'question_id'")
            continue
        raw = entry.get("answers")
        answers = [a.strip() if isinstance(a, str) else "" for a in raw] if isinstance(raw, list) else []
        image_id, question = entry.get("image_id"), entry.get("question")
        if not isinstance(image_id, str) or not image_id.strip():
            collector.reject(where, f"missing 'image_id', found {image_id!r}")
        elif not isinstance(question, str) or not question.strip():
            collector.reject(where, "missing question text")
        elif not answers or not all(answers):
            collector.reject(where, f"'answers' must be a non-empty list of answer strings, found {raw!r:.80}")
        else:
            item = ModalityInput("image", path=base.media_path(media_prefix, f"{image_id}.jpg"))
            meta = {"source": "textvqa", "question_id": qid, "image_id": image_id, "set_name": entry.get("set_name")}
            collector.add(
                base.qa_record(f"textvqa-{qid}", item, question, base.majority_answer(answers), answers, meta), where
            )
    return collector.write(out_manifest)
