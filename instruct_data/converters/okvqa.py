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

import os
from collections import Counter

from onellm.instruct_data.converters.base import (
    Collector,
    ConvertReport,
    coco_qa_record,
    join_coco_qa,
    register_converter,
)


def majority_answer(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one given first (as ClothoAQA's converter does)."""
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


@register_converter("okvqa")
def convert(
    questions_json: str | os.PathLike,
    annotations_json: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> ConvertReport:
    """OK-VQA questions + annotations -> image QA records (answer = most frequent, references = the 10 answers).

    Args:
        questions_json: OpenEnded_mscoco_val2014_questions.json (or train2014).
        annotations_json: mscoco_val2014_annotations.json (or train2014).
        media_prefix: folder of the COCO images under the media root, e.g. coco/val2014.
    """
    collector = Collector("okvqa")
    joined = join_coco_qa(questions_json, annotations_json, collector, "OK-VQA")
    for where, qid, question, ann in joined.pairs:
        raw = ann.get("answers") if isinstance(ann.get("answers"), list) else []
        answers = [str(a.get("answer") or "").strip() if isinstance(a, dict) else "" for a in raw]
        if not answers or not all(answers):
            found = ann.get("answers")
            collector.reject(where, f"'answers' must be a non-empty list of {{'answer': text}}, found {found!r:.80}")
            continue
        record = coco_qa_record("okvqa", joined.subtype, media_prefix, qid, question, ann, majority_answer(answers), answers)
        if record is None:
            collector.reject(where, "missing question text or integer image_id")
            continue
        collector.add(record, where)
    return collector.write(out_manifest)
