"""MSVD-QA (``{train,val,test}_qa.json`` + ``youtube_mapping.txt``).

Layout: ``[{"answer": "man", "id": 0, "question": "who is pouring ...?", "video_id": 1}]``; the mapping file has
lines ``-4wsuPCjDBc_5_15 vid1`` linking ``vid<video_id>`` to the clip ``YouTubeClips/-4wsuPCjDBc_5_15.avi``.
"""

from __future__ import annotations

import os
from pathlib import Path

from onellm.instruct_data.converters import base
from onellm.instruct_data.schema import ModalityInput


def read_mapping(path: str | os.PathLike, collector: base.Collector) -> dict[str, str]:
    """``vidN`` -> clip name; malformed lines are rejected (``youtube_mapping.txt:LINE``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} does not exist")
    mapping = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].startswith("vid"):
            collector.reject(f"{path.name}:{number}", f"expected '<clip name> vid<N>', found {line.strip()!r}")
            continue
        mapping[parts[1]] = parts[0]
    return mapping


@base.register_converter("msvd_qa")
def convert(
    qa_json: str | os.PathLike,
    mapping_txt: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    extension: str = ".avi",
) -> base.ConvertReport:
    """MSVD-QA json + youtube_mapping.txt -> video QA records (one reference answer each).

    Args:
        qa_json: train_qa.json / val_qa.json / test_qa.json.
        mapping_txt: youtube_mapping.txt (clip name, vid<N>).
        media_prefix: folder of the clips under the media root, e.g. msvd/YouTubeClips.
        extension: clip file extension.
    """
    collector = base.Collector("msvd_qa")
    mapping = read_mapping(mapping_txt, collector)
    entries = base.require_list(base.load_json(qa_json), qa_json, "an MSVD-QA list of questions")
    name = Path(qa_json).name
    for index, entry in enumerate(entries):
        qid = entry.get("id") if isinstance(entry, dict) else None
        where = base.describe_entry(name, "entries", index, qid)
        if not isinstance(entry, dict) or qid is None:
            collector.reject(where, "entry needs 'id', 'video_id', 'question' and 'answer'")
            continue
        clip = mapping.get(f"vid{entry.get('video_id')}")
        question, answer = str(entry.get("question", "")).strip(), str(entry.get("answer", "")).strip()
        if clip is None:
            collector.reject(where, f"video_id {entry.get('video_id')!r} is not in {Path(mapping_txt).name}")
        elif not question or not answer:
            collector.reject(where, "empty question or answer")
        else:
            item = ModalityInput("video", path=base.media_path(media_prefix, clip + extension))
            meta = {"source": "msvd_qa", "question_id": qid, "video_id": entry["video_id"], "clip": clip}
            collector.add(base.qa_record(f"msvdqa-{qid}", item, question, answer, [answer], meta), where)
    return collector.write(out_manifest)
