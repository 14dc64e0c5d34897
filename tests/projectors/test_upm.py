"""The Universal Projection Module: shapes, routers, and the one-expert -> K-expert builder."""

from __future__ import annotations

import pytest
import torch

from onellm.projectors import UniversalProjectionModule, expand_experts, placeholder_count, router_modes


def make(num_experts=3, router="pooled", modalities=("image", "audio")):
    torch.manual_seed(0)
    return UniversalProjectionModule(
        list(modalities), in_width=32, out_width=48, num_experts=num_experts, depth=2, num_queries=5, num_heads=4,
        router=router,
    )


def test_output_is_queries_plus_two_tags():
    upm = make()
    out = upm(torch.randn(3, 17, 32), "audio")
    assert out.shape == (3, placeholder_count(5), 48) == (3, 7, 48)
    assert torch.equal(out[:, 0], upm.heads["audio"].start_tag[0].expand(3, -1))
    assert torch.equal(out[:, -1], upm.heads["audio"].end_tag[0].expand(3, -1))


def test_router_modes_registered():
    assert {"pooled", "query"} <= set(router_modes())
    with pytest.raises(KeyError, match="unknown router mode 'best'"):
        make(router="best")


def _train_router(upm):
    # Give the router non-trivial weights (a new router starts uniform).
    for head in upm.heads.values():
        torch.nn.init.normal_(head.router.mlp[-1].weight, std=1.0)


def test_pooled_router_depends_on_the_input():
    upm = make(router="pooled")
    _train_router(upm)
    a = upm.routing_weights(torch.randn(1, 9, 32), "image")
    b = upm.routing_weights(torch.randn(1, 9, 32) * 3 + 1, "image")
    assert a.shape == (1, 1, 3)
    assert torch.allclose(a.sum(-1), torch.ones(1, 1))
    assert not torch.allclose(a, b, atol=1e-4)


def test_query_router_is_input_independent_per_query():
    upm = make(router="query")
    _train_router(upm)
    a = upm.routing_weights(torch.randn(2, 9, 32), "image")
    b = upm.routing_weights(torch.randn(4, 11, 32), "image")
    assert a.shape == (1, 5, 3)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0, 0], a[0, 1])  # different queries route differently


def test_new_router_mixes_uniformly():
    weights = make().routing_weights(torch.randn(2, 9, 32), "image")
    assert torch.allclose(weights, torch.full_like(weights, 1 / 3))


@pytest.mark.parametrize("router", ["pooled", "query"])
def test_upm_from_identical_copies_equals_the_projector(router):
    single = make(num_experts=1, router=router, modalities=("image",))
    upm = expand_experts(single, 3, ["image", "video", "audio"])
    _train_router(upm)  # any routing: the weights sum to one over identical experts
    features = torch.randn(2, 13, 32)
    expected = single(features, "image")
    for modality in ("image", "video", "audio"):  # new heads start as copies of the image head
        assert torch.allclose(upm(features, modality), expected, atol=1e-5)
    assert upm.num_experts == 3 and set(upm.heads) == {"image", "video", "audio"}
    # The copies are independent parameters, not shared ones.
    assert upm.experts[0][0].qkv.weight.data_ptr() != upm.experts[1][0].qkv.weight.data_ptr()


def test_expand_needs_a_single_expert():
    with pytest.raises(ValueError, match="one-expert projector, got 3"):
        expand_experts(make(num_experts=3), 3, ["image"])


def test_unknown_modality_head_is_named():
    with pytest.raises(KeyError, match="no head for modality 'fmri'"):
        make()(torch.randn(1, 4, 32), "fmri")
