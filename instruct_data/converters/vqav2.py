"""VQAv2: a questions file and an annotations file joined on ``question_id``.

Questions: ``{"data_subtype": "val2014", "questions": [{"image_id": 262148, "question": "...", "question_id":
262148000}]}``. Annotations: ``{"annotations": [{"question_id": 262148000, "image_id": 262148,
"multiple_choice_answer": "down", "answers": [{"answer": "down", "answer_confidence": "yes", "answer_id": 1}, ... 10],
"question_type": "where is the", "answer_type": "other"}]}``. Images: ``COCO_val2014_000000262148.jpg``.
"""

from __future__ import annotations

from onellm.instruct_data.converters import base


def multiple_choice_answer(annotation: dict, answers: list[str]) -> str:
    """VQAv2's own target: the annotation's ``multiple_choice_answer`` (the consensus of the 10 answers)."""
    chosen = str(annotation.get("multiple_choice_answer") or "").strip()
    if not chosen:
        raise base.Rejected("empty multiple_choice_answer")
    return chosen


convert = base.register_vqa_converter(
    "vqav2",
    "VQAv2",
    multiple_choice_answer,
    """VQAv2 questions + annotations -> QA records (answer = multiple_choice_answer, references = the 10 answers).

    Args:
        questions_json: v2_OpenEnded_mscoco_val2014_questions.json (or train2014).
        annotations_json: v2_mscoco_val2014_annotations.json (or train2014).
        media_prefix: folder of the COCO images under the media root, e.g. coco/val2014.
    """,
)
