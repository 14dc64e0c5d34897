"""The Universal Projection Module: shapes, routers, and the one-expert -> K-expert builder."""

from __future__ import annotations

import pytest
import torch

from onellm.projectors import UniversalProjectionModule, expand_experts, placeholder_count, router_modes
from onellm.projectors.upm import word_listener


def make(num_experts=3, router="pooled", modalities=("image", "audio"), num_queries=5, **kwargs):
    torch.manual_seed(0)
    return UniversalProjectionModule(
        list(modalities),
        in_width=32,
        out_width=48,
        num_experts=num_experts,
        depth=2,
        num_queries=num_queries,
        num_heads=4,
        router=router,
        **kwargs,
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


def test_pooled_queries_summarise_regions_of_the_patch_grid():
    """Query source "pooled": with a 4x4 patch grid and 4 queries, query i is its learned vector plus the mean of
    the i-th 2x2 region (row-major); the class token is left out; a token sequence that is not a square grid is
    pooled into N runs."""
    from onellm.projectors.queries import build_queries

    queries = torch.randn(1, 4, 8)
    tokens = torch.randn(2, 1 + 16, 8)
    grid = tokens[:, 1:].reshape(2, 4, 4, 8)
    regions = [grid[:, r : r + 2, c : c + 2].mean((1, 2)) for r in (0, 2) for c in (0, 2)]
    torch.testing.assert_close(build_queries("pooled", queries, tokens), queries + torch.stack(regions, 1))
    runs = torch.randn(2, 1 + 6, 8)  # 6 tokens, 3 queries: pairs
    expected = queries[:, :3] + runs[:, 1:].reshape(2, 3, 2, 8).mean(2)
    torch.testing.assert_close(build_queries("pooled", queries[:, :3], runs), expected)
    assert torch.equal(build_queries("learned", queries, tokens), queries.expand(2, -1, -1))
    with pytest.raises(KeyError, match="unknown query source 'best'"):
        build_queries("best", queries, tokens)


def test_pooled_queries_follow_a_modality_grid_of_bands_and_spans():
    """A modality that gives its grid (audio: 2 mel bands x 4 frames of patches, row-major) gets regions of it: with
    2 x 2 regions each query averages one band over half of the frames, where the default (8 tokens, not a square)
    pools runs of consecutive tokens, i.e. whole bands. A grid that does not hold N regions or does not match the
    tokens is refused, naming the modality."""
    from onellm.projectors.queries import build_queries

    queries = torch.randn(1, 4, 8)
    tokens = torch.randn(2, 1 + 8, 8)
    grid = tokens[:, 1:].reshape(2, 2, 4, 8)
    regions = [grid[:, r, c : c + 2].mean(1) for r in (0, 1) for c in (0, 2)]
    pooled = build_queries("pooled", queries, tokens, ((2, 4), (2, 2)))
    torch.testing.assert_close(pooled, queries + torch.stack(regions, 1))
    runs = queries + tokens[:, 1:].reshape(2, 4, 2, 8).mean(2)
    torch.testing.assert_close(build_queries("pooled", queries, tokens), runs)
    with pytest.raises(ValueError, match="9 tokens do not form the 2 x 4 grid"):
        build_queries("pooled", queries, torch.randn(2, 10, 8), ((2, 4), (2, 2)))
    with pytest.raises(ValueError, match="modality 'audio': query_grid \\[1, 4\\] must hold num_queries 5"):
        make(queries="pooled", query_grids={"audio": ((2, 4), (1, 4))})
    upm = make(queries="pooled", expert="mlp", num_queries=4, query_grids={"audio": ((2, 4), (2, 2)), "image": None})
    assert upm.query_grids == {"audio": ((2, 4), (2, 2))}
    assert upm(torch.randn(3, 9, 32), "audio").shape == (3, placeholder_count(4), 48)


def test_mlp_expert_with_pooled_queries_passes_each_region_through():
    """Per-token MLP experts see only their own position: with pooled queries, changing one region of the input
    changes that region's soft token and leaves the others as they were (no attention mixes them); with learned
    queries the input could not reach the output at all, so the output ignores the input."""
    torch.manual_seed(0)
    upm = UniversalProjectionModule(
        ["image"],
        in_width=8,
        out_width=12,
        num_experts=2,
        depth=2,
        num_queries=4,
        num_heads=2,
        expert="mlp",
        queries="pooled",
        router="query",
    ).eval()
    tokens = torch.randn(1, 17, 8)
    changed = tokens.clone()
    changed[:, 1:].view(1, 4, 4, 8)[:, :2, :2] += 1.0  # the top-left 2x2 region
    a, b = upm(tokens, "image")[:, 1:-1], upm(changed, "image")[:, 1:-1]
    assert not torch.allclose(a[:, 0], b[:, 0]) and torch.allclose(a[:, 1:], b[:, 1:])
    upm.query_source = "learned"
    assert torch.equal(upm(tokens, "image"), upm(changed, "image"))


def lexical_upm(num_experts=1):
    return make(num_experts, end_tag="lexical")


def test_lexical_end_tag_is_an_input_dependent_mixture_of_the_word_embeddings():
    upm = lexical_upm()
    vocab = 3.0 * torch.eye(48)  # word v = 3 e_v: a mixture of words has non-negative entries summing to 3
    out = upm(torch.randn(4, 17, 32), "image", vocab)
    end = out[:, -1]
    assert out.shape == (4, placeholder_count(5), 48)
    assert bool((end >= 0).all()) and torch.allclose(end.sum(-1), torch.full((4,), 3.0))
    assert float((end[0] - end[1]).abs().max().detach()) > 1e-4  # each input picks its own words
    assert torch.equal(out[:, 0], upm.heads["image"].start_tag[0].expand(4, -1))  # the start tag stays learned
    assert "end_tag" not in dict(upm.heads["image"].named_parameters())


def test_lexical_end_tag_needs_the_word_embeddings_and_a_known_name():
    with pytest.raises(ValueError, match="needs the LLM's input embeddings"):
        lexical_upm()(torch.randn(2, 17, 32), "image")
    with pytest.raises(ValueError, match="end_tag 'words' is not one of"):
        UniversalProjectionModule(["image"], in_width=32, out_width=48, num_queries=5, num_heads=4, end_tag="words")


def test_word_rows_of_a_frozen_table_are_kept_until_the_table_changes():
    from onellm.projectors.upm import forget_word_rows, word_rows

    table = torch.randn(100, 48)
    rows = word_rows(table[:90], torch.float32, unit=True)
    torch.testing.assert_close(rows, table[:90] / table[:90].norm(dim=-1, keepdim=True))
    assert word_rows(table[:90], torch.float32, unit=True) is rows  # a fresh view of the same table: kept
    forget_word_rows()  # dropped on request: computed again, equal
    again = word_rows(table[:90], torch.float32, unit=True)
    assert again is not rows and torch.equal(again, rows)
    rows = again
    cast = word_rows(table[:90], torch.bfloat16)  # the plain rows in another dtype: kept beside the unit rows
    assert torch.equal(cast, table[:90].bfloat16()) and word_rows(table[:90], torch.bfloat16) is cast
    assert word_rows(table[:90], torch.float32, unit=True) is rows
    assert word_rows(table[:90], torch.bfloat16, unit=True).dtype == torch.bfloat16  # another dtype: computed again
    with torch.no_grad():
        table[3] = 5.0  # an in-place update: computed again, from the new values
    torch.testing.assert_close(word_rows(table[:90], torch.float32, unit=True)[3], torch.full((48,), 48**-0.5))
    other = table.clone()
    assert word_rows(other[:90], torch.float32, unit=True) is not word_rows(table[:90], torch.float32, unit=True)
    with torch.inference_mode():  # rows made in inference mode are never reused outside it (autograd refuses them)
        inside = word_rows(table[:90], torch.float32, unit=True)
    assert inside.is_inference() and not word_rows(table[:90], torch.float32, unit=True).is_inference()
    trained = torch.randn(10, 48, requires_grad=True)  # a table that trains: never kept, the gradient reaches it
    word_rows(trained, torch.float32, unit=True).sum().backward()
    assert trained.grad is not None
    assert word_rows(trained, torch.float32, unit=True) is not word_rows(trained, torch.float32, unit=True)


def test_lexical_tag_under_autocast_equals_the_uncached_computation():
    from onellm.projectors.upm import LexicalTag

    torch.manual_seed(0)
    tag, table, summary = LexicalTag(16, 48), torch.randn(100, 48), torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        end, logits = tag(summary, table[:90])
        query = torch.nn.functional.normalize(tag.proj(summary), dim=-1)
        expected_logits = tag.scale * query @ torch.nn.functional.normalize(table[:90], dim=-1).to(query.dtype).T
        expected = expected_logits.softmax(-1).float() @ table[:90]  # autocast casts both sides to bf16
    assert end.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(logits, expected_logits) and torch.equal(end, expected)
    end, _ = tag(summary, table[:90])  # no autocast: fp32 throughout
    assert end.dtype == torch.float32


def test_expanded_lexical_upm_equals_the_one_expert_projector():
    one = lexical_upm()
    upm = expand_experts(one, 3, ["image", "audio", "video"])
    features, vocab = torch.randn(2, 17, 32), torch.randn(100, 48)
    assert torch.allclose(upm(features, "image", vocab), one(features, "image", vocab), atol=1e-5)
    # a new modality's head names its own words: a fresh word projection, not the image head's
    image_words, video_words = upm.heads["image"].lexical_tag.proj.weight, upm.heads["video"].lexical_tag.proj.weight
    assert torch.equal(image_words, one.heads["image"].lexical_tag.proj.weight)
    assert not torch.equal(video_words, image_words)


def test_a_lexical_start_tag_is_a_second_word_slot():
    upm = make(1, end_tag="lexical", start_tag="lexical")
    vocab = 3.0 * torch.eye(48)
    out = upm(torch.randn(4, 17, 32), "image", vocab)
    start, end = out[:, 0], out[:, -1]
    assert out.shape == (4, placeholder_count(5), 48)  # the same count: the start tag's place holds the slot
    assert bool((start >= 0).all()) and torch.allclose(start.sum(-1), torch.full((4,), 3.0))
    assert float((start[0] - start[1]).abs().max().detach()) > 1e-4  # input-dependent
    assert float((start - end).abs().max().detach()) > 1e-4  # its own word projection, not a copy of the end tag
    head = upm.heads["image"]
    assert head.word_slots == 2 and head.word_tags() == [head.lexical_start, head.lexical_tag]
    assert "start_tag" not in dict(head.named_parameters())
    assert make(1, end_tag="lexical").heads["image"].word_slots == 1 and make(1).heads["image"].word_slots == 0
    with pytest.raises(ValueError, match="start_tag 'lexical' needs end_tag 'lexical'"):
        make(1, start_tag="lexical")
    with pytest.raises(ValueError, match="start_tag 'words' is not one of"):
        make(1, end_tag="lexical", start_tag="words")
    with pytest.raises(ValueError, match="lexical tags needs the LLM's input embeddings"):
        upm(torch.randn(2, 17, 32), "image")
    # a new modality's two slots start fresh; the image head's stay as trained
    wide = expand_experts(upm, 3, ["image", "audio"])
    image, audio = wide.heads["image"], wide.heads["audio"]
    assert torch.equal(image.lexical_start.proj.weight, head.lexical_start.proj.weight)
    assert not torch.equal(audio.lexical_start.proj.weight, head.lexical_start.proj.weight)


def test_word_slots_computed_together_are_each_tags_own_forward():
    """A head's word slots share one vocabulary matmul for their logits and one for their mixtures (slot_words):
    each slot must still be exactly its own tag's forward on the summary, and a word listener hears each tag's logits,
    forward and backward as before."""
    from types import SimpleNamespace

    from onellm.train.lexical import captured_slot_summaries, captured_word_logits

    upm = make(1, end_tag="lexical", start_tag="lexical", extra_slots=1)
    head, vocab = upm.heads["image"], torch.randn(48, 48)
    core = SimpleNamespace(projector=upm)
    with captured_slot_summaries(core, ["image"]) as summaries, captured_word_logits(core) as logits:
        out = upm(torch.randn(4, 17, 32), "image", vocab)
    (summary,) = summaries["image"]
    assert sorted(logits) == [("image", 0), ("image", 1), ("image", 2)]
    for i, (tag, position) in enumerate(zip(head.word_tags(), (0, -2, -1), strict=True)):
        words, own_logits = tag(summary, vocab)
        assert torch.allclose(out[:, position], words, atol=1e-5)
        assert torch.allclose(logits[("image", i)][0], own_logits, atol=1e-4)
    out[:, [0, -2, -1]].square().sum().backward()
    assert all(tag.proj.weight.grad is not None and tag.proj.weight.grad.abs().sum() > 0 for tag in head.word_tags())


def test_extra_word_slots_follow_the_end_tag_and_are_counted():
    upm = make(1, end_tag="lexical", start_tag="lexical", extra_slots=2)
    vocab = 3.0 * torch.eye(48)
    out = upm(torch.randn(4, 17, 32), "image", vocab)
    assert out.shape == (4, placeholder_count(5, 2), 48) == (4, 9, 48) and upm.num_tokens == 9
    head = upm.heads["image"]
    assert head.word_slots == 4
    assert head.word_tags() == [head.lexical_start, head.lexical_tag, *head.extra_slots]
    slots = [out[:, 0], out[:, -3], out[:, -2], out[:, -1]]
    for slot in slots:  # each a mixture of word embeddings, input-dependent
        assert bool((slot >= 0).all()) and torch.allclose(slot.sum(-1), torch.full((4,), 3.0))
        assert float((slot[0] - slot[1]).abs().max().detach()) > 1e-4
    assert all(float((a - b).abs().max().detach()) > 1e-4 for i, a in enumerate(slots) for b in slots[i + 1 :])
    assert torch.equal(upm.query_positions(out), out[:, 1:6])
    # without extra slots the output is what it was
    plain = make(1, end_tag="lexical", start_tag="lexical")
    assert plain(torch.randn(2, 17, 32), "image", vocab).shape == (2, 7, 48)
    with pytest.raises(ValueError, match="extra_slots 1 needs start_tag 'lexical'"):
        make(1, end_tag="lexical", extra_slots=1)
    with pytest.raises(ValueError, match="extra_slots must be >= 0"):
        placeholder_count(5, -1)
    # a new modality's slots start fresh under expand_experts, as the two tags do
    wide = expand_experts(upm, 3, ["image", "audio"])
    assert torch.equal(wide.heads["image"].extra_slots[1].proj.weight, head.extra_slots[1].proj.weight)
    assert not torch.equal(wide.heads["audio"].extra_slots[1].proj.weight, head.extra_slots[1].proj.weight)


def test_region_words_add_each_query_outputs_own_words_to_its_soft_token():
    torch.manual_seed(0)
    kwargs = dict(
        in_width=32, out_width=48, num_experts=1, depth=2, num_queries=4, num_heads=4, queries="pooled", expert="mlp"
    )
    plain = UniversalProjectionModule(["image"], **kwargs)
    worded = UniversalProjectionModule(["image"], **kwargs, region_words="add")
    worded.load_state_dict(plain.state_dict(), strict=False)  # the same projector, plus the region words
    vocab, features = 3.0 * torch.eye(48), torch.randn(2, 17, 32)
    out, base = worded(features, "image", vocab), plain(features, "image")
    assert out.shape == base.shape == (2, placeholder_count(4), 48)  # no extra tokens: the count is unchanged
    words = (out - base)[:, 1:-1]  # only the soft tokens change, by a unit-RMS mixture of words (non-negative here)
    assert torch.equal(out[:, [0, -1]], base[:, [0, -1]])
    torch.testing.assert_close(words.pow(2).mean(-1).sqrt(), torch.ones(2, 4))
    assert bool((words > -1e-6).all())
    assert float((words[:, 0] - words[:, 1]).abs().max().detach()) > 1e-4  # each region its own words
    with pytest.raises(ValueError, match="region words needs the LLM's input embeddings"):
        worded(features, "image")
    with pytest.raises(ValueError, match="region_words 'on' is not one of"):
        UniversalProjectionModule(["image"], **kwargs, region_words="on")
    # a new modality's region words start fresh, as its end tag does
    upm = expand_experts(worded, 3, ["image", "audio"])
    torch.testing.assert_close(upm(features, "image", vocab), out)
    assert not torch.equal(
        upm.heads["audio"].region_words.tag.proj.weight, worded.heads["image"].region_words.tag.proj.weight
    )
    assert [type(t).__name__ for t in upm.heads["audio"].word_tags()] == ["LexicalTag"]


def test_word_slots_read_the_mean_or_the_mean_plus_the_maximum_of_the_query_outputs():
    slots = {"end_tag": "lexical", "start_tag": "lexical", "extra_slots": 1}
    features, vocab = torch.randn(4, 17, 32), 3.0 * torch.eye(48)
    outputs, read = {}, {}
    for summary in ("mean", "mean_max"):
        upm = make(1, slot_summary=summary, **slots)  # the same seed: the same weights (the switch adds none)
        head, heard, mixed = upm.heads["image"], [], []
        head.proj_out.register_forward_hook(lambda _module, args, _out, mixed=mixed: mixed.append(args[0]))
        with word_listener(lambda _tag, s, _logits, heard=heard: heard.append(s)):
            outputs[summary] = upm(features, "image", vocab).detach()
        expected = mixed[0].mean(1) + (mixed[0].amax(1) if summary == "mean_max" else 0)
        assert len(heard) == 3 and all(torch.allclose(s, expected) for s in heard)
        read[summary] = heard[0]
    regions = slice(1, 1 + 5)
    assert torch.equal(outputs["mean"][:, regions], outputs["mean_max"][:, regions])  # the soft tokens are the same
    assert float((outputs["mean"][:, -1] - outputs["mean_max"][:, -1]).abs().max()) > 1e-4  # the slots are not
    assert not torch.allclose(read["mean"], read["mean_max"])
    with pytest.raises(ValueError, match="slot_summary 'max' is not one of"):
        make(1, slot_summary="max", **slots)
