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
    questions = load_json(questions_json)
    annotations = load_json(annotations_json)
    require_keys(questions, ("questions",), questions_json, "an OK-VQA questions file")
    require_keys(annotations, ("annotations",), annotations_json, "an OK-VQA annotations file")
    subtype = questions.get("data_subtype") or annotations.get("data_subtype")
    if not subtype:
        raise ValueError(f"{questions_json}: no 'data_subtype' (e.g. val2014) to build COCO image file names from")
    q_name, a_name = Path(questions_json).name, Path(annotations_json).name
    collector = Collector("okvqa")
    by_question: dict[object, tuple[int, dict]] = {}
    for index, ann in enumerate(annotations["annotations"]):
        if isinstance(ann, dict):
            by_question[ann.get("question_id")] = (index, ann)
        else:
            collector.reject(describe_entry(a_name, "annotations", index), "annotation must be an object")
    asked = set()
    for index, question in enumerate(questions["questions"]):
        if not isinstance(question, dict):
            collector.reject(describe_entry(q_name, "questions", index), "question must be an object")
            continue
        qid = question.get("question_id")
        where = describe_entry(q_name, "questions", index, qid)
        asked.add(qid)
        if qid not in by_question:
            collector.reject(where, f"no annotation with question_id {qid!r} in {a_name}")
            continue
        ann = by_question[qid][1]
        raw = ann.get("answers") if isinstance(ann.get("answers"), list) else []
        answers = [str(a.get("answer") or "").strip() if isinstance(a, dict) else "" for a in raw]
        if not answers or not all(answers):
            found = ann.get("answers")
            collector.reject(where, f"'answers' must be a non-empty list of {{'answer': text}}, found {found!r:.80}")
            continue
        image_id = question.get("image_id")
        if not isinstance(image_id, int) or not str(question.get("question", "")).strip():
            collector.reject(where, "missing question text or integer image_id")
            continue
        record = Record(
            id=f"okvqa-{qid}",
            inputs=[ModalityInput("image", path=media_path(media_prefix, f"COCO_{subtype}_{image_id:012d}.jpg"))],
            conversation=[
                Turn("user", qa_prompt("image", question["question"])),
                Turn("assistant", majority_answer(answers)),
            ],
            task="qa",
            references=answers,
            meta={
                "source": "okvqa",
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
