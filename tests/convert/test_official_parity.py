"""The converted official OneLLM checkpoint reproduces the official code's numbers (issue 13).

Reads the parity fixture (weights with official key names, preprocessed inputs, outputs of the official code) from
``ONELLM_OFFICIAL_FIXTURE`` (default ``../shared/fixtures/onellm_official`` beside the repository). Nothing of the
fixture's sizes is written here: every shape comes from its files, so any fixture of this format runs the same way.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official_fixture import (
    AVAILABLE,
    FIXTURE,
    MANIFEST,
    REPO,
    SKIP_REASON,
    constants,
    convert_fixture,
    stand_in_tokenizer,
)

from onellm.convert.official import MODALITIES, ConversionError, convert_official
from onellm.modeling import OneLLMForConditionalGeneration

if not AVAILABLE:
    pytest.skip(SKIP_REASON, allow_module_level=True)

ATOL_LOGITS, ATOL_HIDDEN = 1e-4, 1e-4


@pytest.fixture(scope="module")
def expected():
    from safetensors.torch import load_file

    return load_file(FIXTURE / "expected.safetensors")


@pytest.fixture(scope="module")
def inputs():
    return dict(np.load(FIXTURE / "inputs.npz"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    # several shards: the index path is exercised
    out, summary = convert_fixture(tmp_path_factory.mktemp("official"), max_shard_bytes=4 << 20)
    model = OneLLMForConditionalGeneration.from_pretrained(out).eval()
    return out, summary, model


def runs() -> list[str]:
    return [run for run in MANIFEST["inference"]["runs"] if run != "text"]


def values_of(inputs: dict, run: str) -> torch.Tensor:
    modality = MODALITIES[run]
    tensor = torch.from_numpy(inputs[run])
    return tensor.flatten(1) if modality == "fmri" else tensor  # official fMRI input is [B, 1, V]


def sequence(model, run: str, inputs: dict) -> torch.Tensor:
    """``[BOS, placeholders (N + 2), text[1:]]``: the official layout, tags right after BOS."""
    ids = torch.from_numpy(inputs[f"tokens_{run}"])
    if run == "text":
        return ids
    marker = model.config.modality_token_ids[MODALITIES[run]]
    placeholders = torch.full((1, model.num_placeholder_tokens), marker)
    return torch.cat([ids[:, :1], placeholders, ids[:, 1:]], dim=1)


def close(actual: torch.Tensor, wanted: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == wanted.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(wanted.shape)}"
    worst = float((actual - wanted).abs().max())
    assert worst <= atol, f"{what}: max |diff| {worst:.2e} > {atol:.0e}"


def test_conversion_writes_an_hf_folder(converted):
    out, summary, model = converted
    assert summary["shards"] > 1 and (out / "model.safetensors.index.json").is_file()
    assert summary["tensors"] == len(model.state_dict())
    assert sorted(summary["modalities"]) == sorted({MODALITIES[r] for r in runs()})
    # the official layout is the 7b preset's: the same registered parts and preprocessing, the fixture's shapes
    from onellm.presets import SEVEN_B_PROJECTOR, family_modalities

    layout = ("expert", "router", "router_norm", "norm", "queries")
    assert {k: model.config.projector_config[k] for k in layout} == {k: SEVEN_B_PROJECTOR[k] for k in layout}
    shapes = {"image_size", "kernel", "num_samples", "num_voxels", "tokens", "num_groups"}
    for modality in model.config.modalities:
        options = model.config.modality_options(modality)
        official = family_modalities("7b")[modality]
        assert all(options[k] == v for k, v in official.items() if k not in shapes), modality


@pytest.mark.parametrize("run", runs())
def test_modality_path_matches_official(converted, expected, inputs, run):
    _, _, model = converted
    modality, values = MODALITIES[run], values_of(inputs, run)
    with torch.no_grad():
        tokenizer = model.mm_tokenizers[modality]
        clip_out = model.encoder(tokenizer(values, model.encoder), getattr(tokenizer, "class_position", None))
        close(clip_out, expected[f"{run}.clip_out"], ATOL_HIDDEN, f"{run} encoder output")
        features = model.encode(modality, values)
        head = model.projector.head(modality)
        queries = head.queries.shape[1]
        weights = model.projector.routing_weights(features, modality)
        close(weights, expected[f"{run}.routing_weights"][:, :queries], 1e-5, f"{run} routing weights")
        x = head.project_in(features)
        seq = torch.cat([head.queries.expand(x.shape[0], -1, -1), x], dim=1)
        for e, expert in enumerate(model.projector.experts):
            close(expert(seq)[:, :queries], expected[f"{run}.expert{e}_out"], ATOL_HIDDEN, f"{run} expert {e}")
        embeds = model.embed_modality(modality, values)
        close(embeds, expected[f"{run}.modality_embeds_32"], ATOL_HIDDEN, f"{run} start tag + UPM + end tag")
        close(embeds[:, 1:-1], expected[f"{run}.upm_out"], ATOL_HIDDEN, f"{run} UPM output")


@pytest.mark.parametrize("run", [*runs(), "text"])
def test_llm_matches_official(converted, expected, inputs, run):
    _, _, model = converted
    ids = sequence(model, run, inputs)
    mm = {} if run == "text" else {MODALITIES[run]: values_of(inputs, run)}
    with torch.no_grad():
        out = model(input_ids=ids, mm_inputs=mm, output_hidden_states=True)
    vocab = expected[f"{run}.logits"].shape[-1]
    first = MANIFEST["sequence_layout"]["per_run"][run]["logits_positions"][0] if run != "text" else 0
    close(out.hidden_states[0], expected[f"{run}.llm_input_embeds"], ATOL_HIDDEN, f"{run} LLM input embeddings")
    close(out.hidden_states[-1], expected[f"{run}.final_hidden"], ATOL_HIDDEN, f"{run} final hidden states")
    close(out.logits[:, first:, :vocab], expected[f"{run}.logits"], ATOL_LOGITS, f"{run} logits")
    # The first greedy token (the prefill) is the official one.
    assert int(out.logits[0, -1].argmax()) == int(expected[f"{run}.gen_ids"][0])


def test_point_groups_match_official(expected, inputs):
    from onellm.modalities.point import group_neighbours

    points = torch.from_numpy(inputs["point"])
    groups, size = expected["point.fps_idx"].shape[1], expected["point.knn_idx"].shape[2]
    centres, neighbours = group_neighbours(points[..., 3:6], groups, size)
    assert torch.equal(centres, expected["point.fps_idx"].long())
    assert torch.equal(neighbours.sort(-1).values, expected["point.knn_idx"].long().sort(-1).values)


def official_decode_logits(model, ids: torch.Tensor, mm: dict, generated: list[int], slip: int) -> list[torch.Tensor]:
    """Test-only reference of the official decode path: decode step i >= 1 feeds token i - 1 at position
    ``len(ids) - slip + i - 1`` (the official code adds 30 instead of 32 to its cache offset, ``slip`` = 2) and
    attends to every cached slot before it, so it overwrites (never sees) the last ``slip`` prompt slots. Returns
    the last-position logits of each step, from one causal forward each (equal to the cached computation)."""
    embeds = model.merge_modalities(ids, model.get_input_embeddings()(ids), mm, None)
    steps = []
    for i in range(1, len(generated) + 1):
        keep = embeds[:, : ids.shape[1] - slip]
        fed = model.get_input_embeddings()(torch.tensor([generated[:i]]))
        out = model.language_model(inputs_embeds=torch.cat([keep, fed], dim=1))
        steps.append(out.logits[0, -1])
    return steps


@pytest.mark.parametrize("run", runs())
def test_decode_differs_from_official_only_by_its_offset_bug(converted, expected, inputs, run):
    _, _, model = converted
    ids, mm = sequence(model, run, inputs), {MODALITIES[run]: values_of(inputs, run)}
    official = [int(t) for t in expected[f"{run}.gen_ids"]]
    steps = MANIFEST["inference"]["runs"][run]
    slip = steps["correct_start_pos"][1] - steps["effective_start_pos"][1]
    with torch.no_grad():
        reference = official_decode_logits(model, ids, mm, official[:-1], slip)
        top_values = expected[f"{run}.gen_step_top32_values"]
        for i, logits in enumerate(reference, start=1):
            # Re-running the official positions reproduces the official steps exactly ...
            assert int(logits.argmax()) == official[i]
            close(logits.topk(top_values.shape[1]).values, top_values[i], ATOL_LOGITS, f"{run} official step {i}")
        # ... while our decode is the correct one: each step equals a full causal forward over prompt + tokens.
        generated = model.generate(
            input_ids=ids,
            mm_inputs=mm,
            max_new_tokens=len(official),
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        full = torch.cat([ids, generated.sequences[:, ids.shape[1] :]], dim=1)
        recompute = model(input_ids=full, mm_inputs=mm).logits[0, ids.shape[1] - 1 : -1]
        ours = torch.stack(generated.logits, dim=1)[0]
        close(ours, recompute, ATOL_LOGITS, f"{run} our decode vs a full forward")
    assert int(generated.sequences[0, ids.shape[1]]) == official[0]  # the prefill agrees


def test_unknown_and_missing_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(FIXTURE / "weights.safetensors")
    tokenizer = stand_in_tokenizer(tmp_path / "tok")
    options = constants()

    extra = dict(weights, **{"llma.surprise.weight": torch.zeros(2)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(ConversionError, match=r"llma\.surprise\.weight"):
        convert_official(tmp_path / "extra.safetensors", FIXTURE / "params.json", tmp_path / "a", tokenizer, **options)

    dropped = "llma.clip_proj2.image.1.bias"
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "missing.safetensors")
    with pytest.raises(ConversionError, match=r"projector\.heads\.image\.proj_out\.1\.bias"):
        convert_official(
            tmp_path / "missing.safetensors", FIXTURE / "params.json", tmp_path / "b", tokenizer, **options
        )


def test_cli_converts_and_answers_mistakes_in_one_line(tmp_path):
    import subprocess
    import sys

    tokenizer = stand_in_tokenizer(tmp_path / "tok")
    base = [
        sys.executable,
        "-m",
        "onellm.cli",
        "convert",
        "official",
        str(FIXTURE / "weights.safetensors"),
        "--params",
        str(FIXTURE / "params.json"),
        "--tokenizer",
        str(tokenizer),
        "--clip-head-width",
        str(constants()["clip_head_width"]),
        "--expert-heads",
        str(constants()["expert_heads"]),
    ]
    done = subprocess.run([*base, "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "converted" in done.stdout and (tmp_path / "out" / "config.json").is_file()
    again = subprocess.run([*base, "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [
        f"onellm convert official: {tmp_path / 'out'}: the output folder exists and is not empty"
    ]


def test_other_dimensions_convert_and_run(tmp_path):
    """Nothing of the fixture's sizes is built in: a checkpoint with other widths, depths, expert and query counts,
    vocabulary, voxel and point-group counts (a .pth, as released) converts, and the model reads every modality."""
    from official_fixture import official_state

    state = official_state(
        dim=96,
        layers=3,
        vocab=1000,
        ffn=256,
        clip_width=64,
        clip_layers=1,
        patch=16,
        grid=4,
        experts=2,
        depth=1,
        queries=6,
        expert_hidden=96,
        voxels=50,
        point_groups=16,
        seed=3,
    )
    torch.save(state, tmp_path / "consolidated.00-of-01.pth")
    (tmp_path / "params.json").write_text(json.dumps({"dim": 96, "n_heads": 4, "n_layers": 3, "norm_eps": 1e-5}))
    stand_in_tokenizer(tmp_path / "tok", 1000)
    out = tmp_path / "out"
    convert_official(
        tmp_path / "consolidated.00-of-01.pth",
        tmp_path / "params.json",
        out,
        tmp_path / "tok",
        clip_head_width=16,
        expert_heads=4,
    )
    model = OneLLMForConditionalGeneration.from_pretrained(out).eval()
    config = model.config
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (96, 3)
    assert (config.vision_config.hidden_size, config.vision_config.image_size) == (64, 64)
    assert config.projector_config["num_experts"] == 2 and config.projector_config["num_queries"] == 6
    assert config.modality_options("fmri")["num_voxels"] == 50 and config.modality_options("point")["num_groups"] == 16
    # the LLM holds the checkpoint's matrices (q/k permuted back equal the source)
    from onellm.convert.official import meta_to_hf_rotary

    q = model.language_model.model.layers[2].self_attn.q_proj.weight
    assert torch.equal(q, meta_to_hf_rotary(state["llma.layers.2.attention.wq.weight"], 4))
    from onellm.modalities import get_modality

    with torch.no_grad():
        for modality in config.modalities:
            values = get_modality(modality).dummy_input(**config.modality_options(modality)).unsqueeze(0)
            assert model.embed_modality(modality, values).shape == (1, 8, 96), modality


def test_converted_processor_batches_prompts_of_different_lengths(converted, inputs):
    """LLaMA-2's tokenizer has no pad token: the converted one pads with <unk>, so evaluation and serving batches
    work (a missing pad token failed `onellm eval` on a converted checkpoint)."""
    from onellm.processing import OneLLMProcessor

    out, _, model = converted
    processor = OneLLMProcessor.from_pretrained(out)
    assert processor.tokenizer.pad_token == "<unk>" and model.generation_config.pad_token_id == 0
    prompts = [
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}])
        for t in ("w5", "w5 w6 w7 w8")
    ]
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3)).astype(np.uint8)
    batch = processor(text=prompts, image=[image, image])
    assert batch["input_ids"].shape[0] == 2 and (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 2)
