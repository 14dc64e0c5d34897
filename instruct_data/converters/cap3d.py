"""Cap3D captions (``Cap3D_automated_Objaverse*.csv``): ``uid,caption`` rows, no header.

Captions containing commas are quoted (pandas ``to_csv``). Point clouds of the same uids ship with PointLLM as
``8192_npy/<uid>_8192.npy``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from onellm.instruct_data.converters import base


@base.register_converter("cap3d")
def convert(
    captions_csv: str | os.PathLike,
    out_manifest: str | os.PathLike,
    *,
    media_prefix: str = "",
    file_pattern: str = "{uid}_8192.npy",
) -> base.ConvertReport:
    """Cap3D uid,caption csv -> point caption records.

    Args:
        captions_csv: Cap3D_automated_Objaverse.csv (or _full / _no3Dword variants).
        media_prefix: folder of the point files under the media root, e.g. pointllm/8192_npy.
        file_pattern: point file name; field {uid}.
    """
    path = Path(captions_csv)
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} does not exist")
    collector = base.Collector("cap3d")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            where = f"{path.name}:{reader.line_num}"
            if not row:
                continue
            if reader.line_num == 1 and [cell.strip().lower() for cell in row] == ["uid", "caption"]:
                collector.skip("header row")  # the release has none, but re-saved copies often do
                continue
            if len(row) != 2:
                collector.reject(where, f"expected 2 columns (uid, caption), found {len(row)}")
                continue
            uid, caption = row[0].strip(), row[1].strip()
            if not uid or not caption:
                collector.reject(where, "empty uid or caption")
                continue
            path_in_root = base.media_path(media_prefix, file_pattern.format(uid=uid))
            base.caption_records(
                collector, f"cap3d-{uid}", path_in_root, [caption], where, {"source": "cap3d"}, "point"
            )
    return collector.write(out_manifest)
