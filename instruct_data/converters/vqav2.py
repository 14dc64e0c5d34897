"""VQAv2: a questions file and an annotations file joined on ``question_id``.

Questions: ``{"data_subtype": "val2014", "questions": [{"image_id": 262148, "question": "...", "question_id":
262148000}]}``. Annotations: ``{"annotations": [{"question_id": 262148000, "image_id": 262148,
"multiple_choice_answer": "down", "answers": [{"answer": "down", "answer_confidence": "yes", "answer_id": 1}, ... 10],
"question_type": "where is the", "answer_type": "other"}]}``. Images: ``COCO_val2014_000000262148.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path

from onellm.instruct_data.converters.base import (
    Collector,
    ConvertReport,
    describe_entry,
    load_json,
    media_path,
    register_converter,
    require_keys,
)
from onellm.instruct_data.schema import ModalityInput, Record, Turn, qa_prompt


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
    questions = load_json(questions_json)
    annotations = load_json(annotations_json)
    require_keys(questions, ("questions",), questions_json, "a VQAv2 questions file")
    require_keys(annotations, ("annotations",), annotations_json, "a VQAv2 annotations file")
    subtype = questions.get("data_subtype") or annotations.get("data_subtype")
    if not subtype:
        raise ValueError(f"{questions_json}: no 'data_subtype' (e.g. val2014) to build COCO image file names from")
    q_name, a_name = Path(questions_json).name, Path(annotations_json).name
    collector = Collector("vqav2")
    by_question: dict[object, tuple[int, dict]] = {}
    for index, ann in enumerate(annotations["annotations"]):
        qid = ann.get("question_id") if isinstance(ann, dict) else None
        by_question[qid] = (index, ann)
    asked = set()
    for index, question in enumerate(questions["questions"]):
        qid = question.get("question_id") if isinstance(question, dict) else None
        where = describe_entry(q_name, "questions", index, qid)
        asked.add(qid)
        if qid not in by_question:
            collector.reject(where, f"no annotation with question_id {qid!r} in {a_name}")
            continue
        ann = by_question[qid][1]
        answer = str(ann.get("multiple_choice_answer") or "").strip()
        answers = [str(a.get("answer", "")).strip() for a in ann.get("answers") or [] if isinstance(a, dict)]
        if not answer:
            collector.reject(where, "empty multiple_choice_answer")
            continue
        if not answers:
            collector.reject(where, "no 'answers' list")
            continue
        image_id = question.get("image_id")
        if not isinstance(image_id, int) or not str(question.get("question", "")).strip():
            collector.reject(where, "missing question text or integer image_id")
            continue
        record = Record(
            id=f"vqav2-{qid}",
            inputs=[ModalityInput("image", path=media_path(media_prefix, f"COCO_{subtype}_{image_id:012d}.jpg"))],
            conversation=[Turn("user", qa_prompt("image", question["question"])), Turn("assistant", answer)],
            task="qa",
            references=answers,
            meta={
                "source": "vqav2",
                "question_id": qid,
                "image_id": image_id,
                "question_type": ann.get("question_type"),
                "answer_type": ann.get("answer_type"),
            },
        )
        collector.add(record, where)
    for qid, (index, _) in by_question.items():
        if qid not in asked:
            collector.reject(describe_entry(a_name, "annotations", index, qid), f"no question with this id in {q_name}")
    return collector.write(out_manifest)
