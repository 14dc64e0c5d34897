"""GQA balanced questions (``{train,val,testdev}_balanced_questions.json`` in GQA's questions1.2.zip).

Layout: one object keyed by question id (a string): ``{"201307251": {"imageId": "n435808", "question": "Is the
woman to the left or to the right of the man?", "answer": "left", "fullAnswer": "The woman is to the left of the
man.", "isBalanced": true, "types": {"structural": "choose", "semantic": "rel", "detailed": "relChooser"},
"groups": {...}, "semantic": [...], "semanticStr": "...", "annotations": {...}, "entailed": [...],
"equivalent": [...]}}``. Images: ``images/<imageId>.jpg``. The test / challenge / submission files carry no
``answer``; their entries are rejected (there is nothing to score against).
"""

from __future__ import annotations

import os
from pathlib import Path

from onellm.instruct_data.converters import base
from onellm.instruct_data.schema import ModalityInput


@base.register_converter("gqa")
def convert(
    questions_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> base.ConvertReport:
    """GQA questions json -> image QA records (answer = the short ``answer``, references = [answer]).

    Args:
        questions_json: testdev_balanced_questions.json (or train_ / val_balanced_questions.json).
        media_prefix: folder of GQA's images under the media root, e.g. gqa/images.
    """
    data = base.load_json(questions_json)
    if not isinstance(data, dict) or "questions" in data or "data" in data:
        found = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{questions_json}: expected a GQA questions file (an object mapping question id to question), "
            f"found {found}"
        )
    name = Path(questions_json).name
    collector = base.Collector("gqa")
    for index, (qid, entry) in enumerate(data.items()):
        where = base.describe_entry(name, "entries", index, qid)
        if not isinstance(entry, dict):
            collector.reject(where, f"entry must be an object, found {type(entry).__name__}")
            continue
        image_id, question = entry.get("imageId"), entry.get("question")
        answer = str(entry.get("answer") or "").strip()
        if not isinstance(image_id, str) or not image_id.strip():
            collector.reject(where, f"missing 'imageId', found {image_id!r}")
        elif not isinstance(question, str) or not question.strip():
            collector.reject(where, "missing question text")
        elif not answer:
            collector.reject(where, "no 'answer' (test / challenge files have none)")
        else:
            item = ModalityInput("image", path=base.media_path(media_prefix, f"{image_id}.jpg"))
            meta = {
                "source": "gqa",
                "question_id": qid,
                "image_id": image_id,
                "full_answer": entry.get("fullAnswer"),
                "types": entry.get("types"),
            }
            collector.add(base.qa_record(f"gqa-{qid}", item, question, answer, [answer], meta), where)
    return collector.write(out_manifest)
