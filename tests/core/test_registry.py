"""Every named registry refuses a second entry under a taken name and names the known ones on a typo."""

from __future__ import annotations

import pytest

from onellm.registry import Registry


def test_registry_contract():
    shapes = Registry("shape")
    circle = shapes.register("circle")(lambda: "o")
    assert shapes.add("circle", circle) is circle  # the same object again (a module re-import) is fine
    shapes.add("square", lambda: "[]")
    assert shapes.names() == ["circle", "square"] and "circle" in shapes and len(shapes) == 2
    with pytest.raises(ValueError, match=r"shape 'circle' is already registered by .*; cannot register .* under it"):
        shapes.add("circle", lambda: "O")
    with pytest.raises(KeyError, match=r"unknown shape 'cirlce'; known: circle, square"):
        shapes["cirlce"]
    ordered = Registry("step", sort=False)
    for name in ("zeta", "alpha"):
        ordered.add(name, name)
    assert ordered.names() == ["zeta", "alpha"]


def _clashes():
    """(what, register a different entry under a taken name) for each registry of the project."""
    from onellm.encoder import register_encoder
    from onellm.eval.backends.base import register_backend
    from onellm.eval.metrics.base import register_metric
    from onellm.instruct_data.converters.base import register_converter
    from onellm.presets import register_preset
    from onellm.projectors.experts import register_expert
    from onellm.projectors.queries import register_queries
    from onellm.projectors.routers import register_router
    from onellm.train.recipes import register_recipe

    def fn(*args, **kwargs):
        return None

    yield "preset", lambda: register_preset("tiny")(fn)
    yield "recipe", lambda: register_recipe("align")(fn)
    yield "encoder", lambda: register_encoder("dinov2")(fn)
    yield "router", lambda: register_router("pooled")(fn)
    yield "expert", lambda: register_expert("mlp")(fn)
    yield "queries", lambda: register_queries("pooled")(fn)
    yield "converter", lambda: register_converter("audiocaps")(fn)

    from onellm.eval.backends.base import Backend
    from onellm.eval.metrics.base import Metric

    yield "metric", lambda: register_metric("exact_match")(type("Other", (Metric,), {"compute": fn}))
    yield "backend", lambda: register_backend("hf")(type("Other", (Backend,), {}))


@pytest.mark.parametrize("what, clash", list(_clashes()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_taken_name_is_refused_everywhere(what, clash):
    with pytest.raises(ValueError, match="is already registered by"):
        clash()


def test_a_second_modality_class_under_a_taken_name_is_refused():
    from onellm.modalities import get_modality, register_modality

    image = type(get_modality("image"))
    with pytest.raises(ValueError, match="modality 'image' is already registered"):
        register_modality(type("OtherImage", (image,), {}))
    assert register_modality(image) is image  # the registered class again: no error, same instance kept
