"""OK-VQA (okvqa.allenai.org, v1.1): a questions file and an annotations file joined on ``question_id``.

Questions (``OpenEnded_mscoco_val2014_questions.json``): ``{"data_subtype": "val2014", "task_type": "Open-Ended",
"questions": [{"image_id": 297147, "question": "What sport can you use this for?", "question_id": 2971475}]}``.
Annotations (``mscoco_val2014_annotations.json``): ``{"annotations": [{"image_id": 297147, "question_id": 2971475,
"question_type": "four", "answer_type": "other", "confidence": 3, "answers": [{"answer_id": 1, "raw_answer":
"racing", "answer_confidence": "yes", "answer": "race"}, ... 10]}]}``. Unlike VQAv2 there is no
``multiple_choice_answer``: the target is the most frequent ``answer`` (the stemmed form the VQA accuracy is computed
on). Images: COCO ``COCO_val2014_000000297147.jpg``.
"""

from __future__ import annotations

from onellm.instruct_data.converters import base

convert = base.register_vqa_converter(
    "okvqa",
    "OK-VQA",
    lambda annotation, answers: base.majority_answer(answers),
    """OK-VQA questions + annotations -> image QA records (answer = most frequent, references = the 10 answers).

    Args:
        questions_json: OpenEnded_mscoco_val2014_questions.json (or train2014).
        annotations_json: mscoco_val2014_annotations.json (or train2014).
        media_prefix: folder of the COCO images under the media root, e.g. coco/val2014.
    """,
)
