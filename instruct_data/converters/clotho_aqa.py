"""ClothoAQA (``clotho_aqa_{train,val,test}.csv``): several crowd answers per (audio file, question).

Layout: header ``file_name,QuestionText,answer,confidence``; each question appears once per annotator (usually
three rows), ``confidence`` is yes / maybe / no. Rows of the same (file_name, QuestionText) become one QA record:
the answer is the most frequent one (ties: the first given), the references are all answers.
"""

from __future__ import annotations

import os
from collections import Counter

from onellm.instruct_data.converters import base
from onellm.instruct_data.schema import ModalityInput


@base.register_converter("clotho_aqa")
def convert(
    qa_csv: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
) -> base.ConvertReport:
    """ClothoAQA csv -> audio QA records (majority answer, all answers as references).

    Args:
        qa_csv: clotho_aqa_train.csv / _val.csv / _test.csv.
        media_prefix: folder of the .wav files under the media root, e.g. clotho_aqa/audio_files.
    """
    collector = base.Collector("clotho_aqa")
    groups: dict[tuple[str, str], list[tuple[str, dict[str, str]]]] = {}
    for where, row in base.read_csv(qa_csv, ("file_name", "QuestionText", "answer", "confidence")):
        if not row["file_name"] or not row["QuestionText"]:
            collector.reject(where, "empty file_name or QuestionText")
        elif not row["answer"]:
            collector.reject(where, "empty answer")
        else:
            groups.setdefault((row["file_name"], row["QuestionText"]), []).append((where, row))
    questions_per_file: Counter[str] = Counter()
    for (file_name, question), rows in groups.items():
        answers = [row["answer"] for _, row in rows]
        number = questions_per_file[file_name]
        questions_per_file[file_name] += 1
        item = ModalityInput("audio", path=base.media_path(media_prefix, file_name))
        meta = {"source": "clotho_aqa", "file_name": file_name, "confidence": [row["confidence"] for _, row in rows]}
        record = base.qa_record(
            f"clothoaqa-{file_name}-q{number}", item, question, base.majority_answer(answers), answers, meta
        )
        collector.add(record, rows[0][0])
    return collector.write(out_manifest)
