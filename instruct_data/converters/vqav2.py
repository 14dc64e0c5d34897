"""VQAv2: a questions file and an annotations file joined on ``question_id``.

Questions: ``{"data_subtype": "val2014", "questions": [{"image_id": 262148, "question": "...", "question_id":
262148000}]}``. Annotations: ``{"annotations": [{"question_id": 262148000, "image_id": 262148,
"multiple_choice_answer": "down", "answers": [{"answer": "down", "answer_confidence": "yes", "answer_id": 1}, ... 10],
"question_type": "where is the", "answer_type": "other"}]}``. Images: ``COCO_val2014_000000262148.jpg``.
"""

from __future__ import annotations

import os

from onellm.instruct_data.converters.base import (
    Collector,
    ConvertReport,
    coco_qa_record,
    join_coco_qa,
    register_converter,
)


@register_converter("vqav2")
def convert(
    questions_json: str | os.PathLike,
    annotations_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> ConvertReport:
    """VQAv2 questions + annotations -> QA records (answer = multiple_choice_answer, references = the 10 answers).

    Args:
        questions_json: v2_OpenEnded_mscoco_val2014_questions.json (or train2014).
        annotations_json: v2_mscoco_val2014_annotations.json (or train2014).
        media_prefix: folder of the COCO images under the media root, e.g. coco/val2014.
    """
    collector = Collector("vqav2")
    joined = join_coco_qa(questions_json, annotations_json, collector, "VQAv2")
    for where, qid, question, ann in joined.pairs:
        answer = str(ann.get("multiple_choice_answer") or "").strip()
        answers = [str(a.get("answer", "")).strip() for a in ann.get("answers") or [] if isinstance(a, dict)]
        if not answer:
            collector.reject(where, "empty multiple_choice_answer")
            continue
        if not answers:
            collector.reject(where, "no 'answers' list")
            continue
        record = coco_qa_record("vqav2", joined.subtype, media_prefix, qid, question, ann, answer, answers)
        if record is None:
            collector.reject(where, "missing question text or integer image_id")
            continue
        collector.add(record, where)
    return collector.write(out_manifest)
