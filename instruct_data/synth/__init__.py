"""Synthetic corpus: one generator file per modality, registered by modality name.

    from onellm.instruct_data.synth import synthesize
    report = synthesize("data/synth", per_modality=1000, seed=0)                     # OneLLM's eight
    report = synthesize("data/synth-all", per_modality=1000, seed=0, modalities="all")  # all fourteen

Adding a modality = one file here with a ``@register_generator`` class (+ an import line below).
"""

# Import order = order of the modalities in the manifests and synth_info.json (curriculum order, image first).
from onellm.instruct_data.synth import image, video, audio, point, depth, normal, imu, fmri  # noqa: F401, I001
from onellm.instruct_data.synth import xray, infrared, hyperspectral, timeseries, tabular, graph  # noqa: F401, I001
from onellm.instruct_data.synth.base import (
    QA,
    Description,
    Generator,
    generator_names,
    get_generator,
    register_generator,
)
from onellm.instruct_data.synth.corpus import GENERATOR_VERSION, SPLITS, SynthReport, corpus_modalities, synthesize

__all__ = [
    "GENERATOR_VERSION",
    "QA",
    "SPLITS",
    "Description",
    "Generator",
    "SynthReport",
    "corpus_modalities",
    "generator_names",
    "get_generator",
    "register_generator",
    "synthesize",
]
