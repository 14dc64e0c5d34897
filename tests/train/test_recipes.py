"""The tiny curriculum end to end (a few steps per stage): every output, what trains and what stays frozen,
the UPM built from the image projector, the LoRA exports, and skipping finished stages on a rerun."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from onellm import OneLLMForConditionalGeneration, OneLLMProcessor
from onellm.train.config import load_curriculum
from onellm.train.curriculum import run_curriculum

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
STAGES = ["align_image", "build_upm", "align_av3d", "align_rest", "instruct"]
TRAINING = ["align_image", "align_av3d", "align_rest", "instruct"]


@pytest.fixture(scope="module")
def mini_run(synth_tiny, tmp_path_factory, accelerator, quick):
    """The shipped tiny curriculum, 4 steps per training stage -> (output dir, outputs, captured stderr)."""
    out = tmp_path_factory.mktemp("runs")
    # mixed batches: in 4 steps every modality of a stage is seen (per-source batching is covered elsewhere)
    curriculum = load_curriculum(
        TINY / "curriculum.yaml", quick(synth_tiny, out, steps=4, **{"data.batching": "mixed"})
    )
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        outputs = run_curriculum(curriculum, accelerator)
    return out, outputs, stderr.getvalue(), curriculum


def load(path: str | Path) -> OneLLMForConditionalGeneration:
    return OneLLMForConditionalGeneration.from_pretrained(str(path))


def state(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load(path).state_dict().items() if k.startswith(prefix)}


def test_every_stage_writes_its_outputs(mini_run):
    out, outputs, log, _ = mini_run
    assert list(outputs) == STAGES
    for name in STAGES:
        assert (out / name / "DONE").is_file()
        assert OneLLMProcessor.from_pretrained(str(out / name / "final")).num_placeholder_tokens == 6
    for name in TRAINING:
        stage = out / name
        assert (stage / "summary.md").read_text().startswith(f"# Stage `{name}`")
        assert (stage / "loss.png").stat().st_size > 1000
        assert list((stage / "tensorboard").glob("events.out.tfevents.*"))
        rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
        done = json.loads((stage / "DONE").read_text())
        assert done["steps"] == 4 and done["val_loss"] is not None
    assert set(outputs["instruct"]) == {"checkpoint", "adapter", "merged"}
    rows = [
        line.split("|")[1].strip() for line in (out / "summary.md").read_text().splitlines()[4:] if line.startswith("|")
    ]
    assert rows == STAGES
    assert (out / "loss.png").is_file()
    # freezing is reported at the start of each stage, with counts per group
    assert log.count("trainable parameters") == 4
    assert "lora" in log and "% trainable" in log


def test_stage_one_trains_one_image_projector_and_step_two_copies_it(mini_run):
    out, _, _, _ = mini_run
    stage1, upm = load(out / "align_image" / "final"), load(out / "build_upm" / "final")
    assert stage1.projector.num_experts == 1 and upm.projector.num_experts == 3
    assert upm.config.projector_config["num_experts"] == 3
    expert = stage1.projector.experts[0].state_dict()
    for copy in upm.projector.experts:
        assert all(torch.equal(copy.state_dict()[k], v) for k, v in expert.items())
    image_head = {k: v for k, v in stage1.projector.heads["image"].state_dict().items() if not k.startswith("router")}
    for name in ("image", "audio", "fmri"):
        head = upm.projector.heads[name].state_dict()
        # feature statistics are the image's for the image head; a new modality's head gathers its own
        weights = {k: v for k, v in image_head.items() if name == "image" or not k.startswith("standardize.")}
        assert all(torch.equal(head[k], v) for k, v in weights.items())
        assert (float(head["standardize.count"]) > 0) == (name == "image")
    # the preset's untrained heads are not carried over: every head is the trained image head
    assert not torch.equal(stage1.projector.heads["audio"].queries, upm.projector.heads["audio"].queries)


def test_alignment_trains_only_what_the_stage_lists(mini_run):
    out, _, _, _ = mini_run
    before, after = out / "build_upm" / "final", out / "align_av3d" / "final"
    for frozen in ("language_model.", "encoder.", "mm_tokenizers.imu.", "mm_tokenizers.fmri."):
        a, b = state(before, frozen), state(after, frozen)
        assert a and all(torch.equal(a[k], b[k]) for k in a), f"{frozen} changed in align_av3d"
    for trained in ("mm_tokenizers.audio.", "mm_tokenizers.point.", "projector.experts.", "projector.heads.video."):
        a, b = state(before, trained), state(after, trained)
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{trained} did not train in align_av3d"


def test_instruct_exports_adapter_and_an_equivalent_merged_checkpoint(mini_run, synth_tiny):
    from peft import PeftModel

    out, outputs, _, _ = mini_run
    processor = OneLLMProcessor.from_pretrained(outputs["instruct"]["merged"])
    config = json.loads((Path(outputs["instruct"]["adapter"]) / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"].endswith("instruct/final")
    # the LLM of final/ is the frozen one of align_rest; the UPM trained on
    rest, final = out / "align_rest" / "final", out / "instruct" / "final"
    a, b = state(rest, "language_model."), state(final, "language_model.")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(
        not torch.equal(x, y)
        for x, y in zip(state(rest, "projector.").values(), state(final, "projector.").values(), strict=True)
    )

    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat is it?"}])
    image = next((synth_tiny / "media" / "image").glob("*.png"))
    batch = processor(text=prompt, image=[image])
    adapted = PeftModel.from_pretrained(load(final), outputs["instruct"]["adapter"]).eval()
    merged = load(outputs["instruct"]["merged"]).eval()
    base = load(final).eval()
    with torch.no_grad():
        want = adapted(**batch).logits
        got = merged(**batch).logits
        plain = base(**batch).logits
    assert torch.allclose(want, got, atol=1e-4)
    assert not torch.allclose(plain, got, atol=1e-4)  # the adapter changed something


def test_a_rerun_skips_finished_stages(mini_run, accelerator):
    out, outputs, _, curriculum = mini_run
    stamps = {name: (out / name / "DONE").stat().st_mtime_ns for name in STAGES}
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        again = run_curriculum(curriculum, accelerator)
    assert again == outputs
    assert stderr.getvalue().count("already finished") == 5
    assert stamps == {name: (out / name / "DONE").stat().st_mtime_ns for name in STAGES}


def test_bf16_stage_trains_under_autocast(synth_tiny, tmp_path, quick, accelerator):
    from onellm.train.config import load_stage
    from onellm.train.recipes import run_stage

    stage = load_stage(TINY / "align_image.yaml", quick(synth_tiny, tmp_path, steps=2, **{"train.precision": "bf16"}))
    run_stage(stage, accelerator)
    rows = [json.loads(line) for line in (stage.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert "bf16" in (stage.stage_dir / "summary.md").read_text()
    # weights are kept in fp32 (autocast computes in bf16): the checkpoint loads as fp32
    assert load(stage.stage_dir / "final").projector.experts[0].parameters().__next__().dtype == torch.float32


def test_auto_precision_follows_the_hardware(synth_tiny, tmp_path, quick, accelerator, monkeypatch):
    """precision auto: bf16 autocast where bf16 is native (AVX512-BF16 / AMX CPUs, bf16 GPUs), else fp32; the stage
    summary says which was used."""
    from onellm.train import config as config_module
    from onellm.train.config import TrainConfig, fast_bf16, load_stage
    from onellm.train.recipes import run_stage

    train = TrainConfig(steps=1, batch_size=1, precision="auto")
    monkeypatch.setattr(config_module, "fast_bf16", lambda device: False)
    assert train.resolved_precision("cpu") == "fp32"
    monkeypatch.setattr(config_module, "fast_bf16", lambda device: device == "cpu")
    assert train.resolved_precision("cpu") == "bf16" and train.resolved_precision("mps") == "fp32"
    monkeypatch.undo()
    assert TrainConfig(steps=1, batch_size=1, precision="bf16").resolved_precision("cpu") == "bf16"

    stage = load_stage(TINY / "align_image.yaml", quick(synth_tiny, tmp_path, steps=2, **{"train.precision": "auto"}))
    run_stage(stage, accelerator)
    used = "bf16" if fast_bf16("cpu") else "fp32"
    assert f"auto: {used}" in (stage.stage_dir / "summary.md").read_text()
