"""Task YAMLs: every shipped task validates, bad files fail naming the file and the key, data folders resolve,
missing official files are named, and converter-backed tasks read official layouts through the converters."""

from __future__ import annotations

import json
import textwrap
from inspect import signature
from pathlib import Path

import pytest
from PIL import Image

from onellm.eval.runner import prepare_task
from onellm.eval.sources import DataDirs, EvalDataError, get_source, source_parameters
from onellm.eval.task import (
    TaskConfigError,
    load_task,
    load_task_file,
    load_tasks,
    question_text,
    task_files,
    task_names,
)
from onellm.instruct_data.converters import converter_names, get_converter
from onellm.modalities import modality_names

BENCHMARKS = (
    "coco_cap", "nocaps", "flickr30k", "vqav2", "gqa", "textvqa", "okvqa", "clotho_aqa", "clotho_cap",
    "audiocaps_cap", "msvd_qa", "pointllm_cap", "ego4d_imu_cap", "nsd_fmri_cap",
)  # fmt: skip


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


VALID = """\
task: {name}
version: 1
modality: image
task_type: caption
source: {{kind: synth, dataset: synth, split: test}}
metrics: [coco_caption]
"""


# --- shipped tasks ------------------------------------------------------------------------------------------------


def test_shipped_tasks_cover_every_modality_and_benchmark():
    names = set(task_names())
    for modality in modality_names():
        assert {f"synth_{modality}_caption", f"synth_{modality}_qa"} <= names
    assert set(BENCHMARKS) <= names
    assert not any(name.startswith("_") for name in names), "templates (_*.yaml) must not be listed as tasks"


@pytest.mark.parametrize("name", task_names())
def test_shipped_task_validates(name):
    task = load_task(name)
    assert task.name == name and task.path == task_files()[name]
    if name.startswith("synth_"):
        modality, kind = name.removeprefix("synth_").rsplit("_", 1)
        assert (task.modality, task.task_type, task.source["kind"]) == (modality, kind, "synth")
        assert task.source["default_dir"] == "runs/synth"


@pytest.mark.parametrize("name", [n for n in BENCHMARKS])
def test_converter_tasks_match_their_converter(name):
    task = load_task(name)
    converter = task.source["converter"]
    if converter not in converter_names():
        pytest.skip(f"converter {converter!r} is not in onellm.instruct_data.converters yet")
    convert = get_converter(converter)
    assert sorted(task.source["files"]) == sorted(source_parameters(convert))
    keyword_only = {p.name for p in signature(convert).parameters.values() if p.kind is p.KEYWORD_ONLY}
    assert set(task.source.get("options", {})) <= keyword_only


def test_default_prompts_and_fields():
    caption = load_task("synth_point_caption")
    assert caption.render_prompt() == "Provide a one-sentence caption for the provided point cloud."
    qa = load_task("synth_fmri_qa")
    assert qa.render_prompt("Is it red?") == "Is it red? Answer the question using a single word or phrase."


def test_question_text_inverts_the_record_prompt():
    turn = "<imu>\nWhich way does the person turn? Answer the question using a single word or phrase."
    assert question_text(turn, ["<imu>", "<image>"]) == "Which way does the person turn?"
    assert question_text("<image>\nWhat is this?\nA. cat\nB. dog", ["<image>"]) == "What is this?\nA. cat\nB. dog"


# --- validation errors name the file and the key -----------------------------------------------------------------

BAD = {
    "unknown_top_key": (VALID + "shots: 3\n", "shots: unknown key"),
    "missing_metrics": ("task: {name}\nversion: 1\nmodality: image\ntask_type: qa\n"
                        "source: {{kind: synth, dataset: synth, split: test}}\n", "metrics: required key is missing"),
    "unknown_metric": (VALID.replace("[coco_caption]", "[cidr]"), "metrics[0]: unknown metric 'cidr'"),
    "bad_modality": (VALID.replace("image", "smell"), "modality: 'smell' is not a registered modality"),
    "question_in_caption": (VALID + "prompt: '{{question}} Describe.'\n", "prompt: unknown field {question}"),
    "zero_tokens": (VALID + "generation: {{max_new_tokens: 0}}\n", "generation.max_new_tokens: expected a positive"),
    "bad_stop": (VALID + "generation: {{stop: [1]}}\n", "generation.stop[0]: expected str, got 1"),
    "unknown_gen_key": (VALID + "generation: {{beams: 4}}\n", "generation.beams: unknown key"),
    "unknown_kind": (VALID.replace("kind: synth", "kind: s3"), "source.kind: 's3' is not a source kind"),
    "missing_split": (VALID.replace(", split: test", ""), "source.split: required key is missing"),
    "bad_split": (VALID.replace("split: test", "split: dev"), "source.split: 'dev' is not a split"),
    "source_extra": (VALID.replace("split: test", "split: test, shuffle: true"), "source.shuffle: unknown key"),
    "files_not_map": (VALID.replace("kind: synth, dataset: synth, split: test",
                                      "kind: converter, dataset: coco, converter: coco_karpathy, files: x.json"),
                      "source.files: expected dict"),
    "bad_metric_options": (VALID.replace("[coco_caption]", "[{{name: coco_caption, options: 1}}]"),
                           "metrics[0].options: expected a mapping"),
    "bad_version": (VALID.replace("version: 1", "version: [1]"), "version: expected one of ['int', 'str'], got [1]"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_task_names_file_and_key(tmp_path, case):
    text, expected = BAD[case]
    text = text.format(name=case)
    path = write(tmp_path, f"{case}.yaml", text)
    with pytest.raises(TaskConfigError) as error:
        load_task_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message


def test_task_name_must_match_file(tmp_path):
    path = write(tmp_path, "mine.yaml", VALID.format(name="other"))
    with pytest.raises(TaskConfigError, match=r"mine\.yaml: task: 'other' differs from the file name 'mine'"):
        load_task_file(path)


def test_yaml_syntax_and_shape_errors(tmp_path):
    with pytest.raises(TaskConfigError, match=r"broken\.yaml: not valid YAML"):
        load_task_file(write(tmp_path, "broken.yaml", "task: [unclosed\n"))
    with pytest.raises(TaskConfigError, match=r"alist\.yaml: expected a mapping"):
        load_task_file(write(tmp_path, "alist.yaml", "- a\n- b\n"))


def test_include_merges_nested_keys_and_reports_problems(tmp_path):
    write(tmp_path, "_base.yaml", VALID.format(name="unused") + 'generation: {max_new_tokens: 5, stop: ["\\n"]}\n')
    path = write(tmp_path, "child.yaml", "include: _base.yaml\ntask: child\ngeneration: {max_new_tokens: 9}\n")
    task = load_task_file(path)
    assert task.generation.max_new_tokens == 9 and task.generation.stop == ("\n",)  # merged, not replaced
    assert task.source["split"] == "test"
    with pytest.raises(TaskConfigError, match=r"nobase\.yaml: task file not found \(included from orphan\.yaml\)"):
        load_task_file(write(tmp_path, "orphan.yaml", "include: nobase.yaml\ntask: orphan\n"))
    write(tmp_path, "_a.yaml", "include: _b.yaml\n")
    write(tmp_path, "_b.yaml", "include: _a.yaml\n")
    with pytest.raises(TaskConfigError, match="include cycle"):
        load_task_file(write(tmp_path, "loop.yaml", "include: _a.yaml\ntask: loop\n"))


def test_user_folder_adds_tasks_without_python(tmp_path):
    write(tmp_path, "my_caps.yaml", VALID.format(name="my_caps"))
    assert "my_caps" in task_names([tmp_path])
    assert load_tasks(["my_caps", "synth_image_qa"], [tmp_path])[0].path == tmp_path / "my_caps.yaml"
    with pytest.raises(TaskConfigError, match="unknown task 'my_caps'"):
        load_task("my_caps")
    with pytest.raises(TaskConfigError, match="listed twice"):
        load_tasks(["synth_image_qa", "synth_image_qa"])


# --- data folders and missing files -------------------------------------------------------------------------------


def test_data_dir_resolution_order(tmp_path):
    env = {"ONELLM_DATA_COCO": str(tmp_path / "env-coco"), "ONELLM_DATA_ROOT": str(tmp_path / "env-root")}
    explicit = DataDirs({"coco": tmp_path / "flag"}, tmp_path / "root", env)
    assert explicit.resolve("coco")[0] == tmp_path / "flag"
    assert DataDirs({}, tmp_path / "root", env).resolve("coco")[0] == tmp_path / "env-coco"
    assert DataDirs({}, tmp_path / "root", env).resolve("gqa")[0] == tmp_path / "root" / "gqa"
    assert DataDirs({}, None, env).resolve("gqa")[0] == tmp_path / "env-root" / "gqa"
    folder, how = DataDirs({}, None, {}).resolve("synth", "runs/synth")
    assert folder == Path("runs/synth").resolve() and how == "the task's default_dir"
    assert DataDirs({}, None, {}).resolve("gqa")[0] == Path("data/gqa").resolve()


def test_missing_official_file_is_named(tmp_path):
    task = load_task("coco_cap")
    with pytest.raises(EvalDataError) as error:
        prepare_task(task, DataDirs({"coco": tmp_path}), tmp_path / "scratch")
    message = str(error.value)
    assert f"missing file {tmp_path / 'dataset_coco.json'}" in message
    assert "source.files.dataset_json" in message and "--data-dir coco=DIR" in message
    assert "caption_datasets.zip" in message  # the YAML's hint says where the file comes from


def test_missing_synthetic_corpus_says_how_to_build_it(tmp_path):
    with pytest.raises(EvalDataError) as error:
        prepare_task(load_task("synth_imu_qa"), DataDirs({"synth": tmp_path}), tmp_path / "scratch")
    assert str(tmp_path / "test.jsonl") in str(error.value) and "onellm data synth" in str(error.value)


def test_unregistered_converter_is_named(tmp_path):
    source = "kind: converter, dataset: x, converter: nofmt, files: {a: a.json}"
    path = write(
        tmp_path, "newfmt.yaml", VALID.format(name="newfmt").replace("kind: synth, dataset: synth, split: test", source)
    )
    with pytest.raises(EvalDataError, match="needs the converter 'nofmt', which is not registered"):
        prepare_task(load_task_file(path), DataDirs({"x": tmp_path}), tmp_path / "scratch")


def karpathy_folder(root: Path, n_test: int = 3) -> Path:
    """A miniature dataset_coco.json (Karpathy layout) with its val2014 images."""
    images = []
    for i in range(n_test + 1):
        split = "test" if i < n_test else "train"
        name = f"COCO_val2014_{i:012d}.jpg"
        (root / "val2014").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (10 * i, 80, 120)).save(root / "val2014" / name)
        sentences = [{"raw": f"picture number {i} variant {k}.", "tokens": [], "imgid": i} for k in range(5)]
        images.append({"filepath": "val2014", "filename": name, "imgid": i, "cocoid": 1000 + i, "split": split,
                       "sentences": sentences})  # fmt: skip
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    return root


def test_converter_task_reads_official_layout(tmp_path):
    folder = karpathy_folder(tmp_path / "coco")
    prepared = prepare_task(load_task("coco_cap"), DataDirs({"coco": folder}), tmp_path / "scratch", limit=2)
    assert prepared.available == 3 and len(prepared.samples) == 2  # the train image is skipped by the converter
    first = prepared.samples[0]
    assert first.references == [f"picture number 0 variant {k}." for k in range(5)]
    assert first.request.text == "Provide a one-sentence caption for the provided image."
    assert first.request.media[0].source == str(folder / "val2014" / "COCO_val2014_000000000000.jpg")
    assert prepared.data["converter"] == "coco_karpathy" and prepared.data["kept"] == 3
    assert prepared.data["skipped"] == {"split 'train' not in ['test']": 1}


def test_missing_media_files_are_named(tmp_path):
    folder = karpathy_folder(tmp_path / "coco")
    (folder / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(EvalDataError, match=r"1 of the 3 samples' media files are missing .*COCO_val2014_000000000001"):
        prepare_task(load_task("coco_cap"), DataDirs({"coco": folder}), tmp_path / "scratch")


def test_every_source_kind_is_registered():
    for kind in ("synth", "manifest", "hf_dataset", "converter"):
        assert get_source(kind).kind == kind


def own_records(folder: Path) -> list:
    """Two image captions, one image question and an fMRI caption with an inline voxel array."""
    from onellm.instruct_data.schema import ModalityInput, Record, Turn, caption_prompt, qa_prompt

    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(folder / "img" / "a.png")
    caption = [Turn("user", caption_prompt("image")), Turn("assistant", "a red square")]
    return [
        Record("c1", [ModalityInput("image", path="img/a.png")], caption, "caption", ["a red square", "red"]),
        Record("q1", [ModalityInput("image", path="img/a.png")],
               [Turn("user", qa_prompt("image", "What colour?")), Turn("assistant", "red")], "qa", ["red"]),
        Record("c2", [ModalityInput("image", path="img/a.png")], caption, "caption", ["a red square"]),
        Record("f1", [ModalityInput("fmri", array=[0.5] * 16)],
               [Turn("user", caption_prompt("fmri")), Turn("assistant", "a scan")], "caption", ["a scan"]),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["manifest", "hf_dataset"])
def test_own_data_as_manifest_or_saved_dataset(tmp_path, kind):
    from onellm.instruct_data.schema import to_hf_dataset, write_manifest

    data = tmp_path / "mine"
    records = own_records(data)
    if kind == "manifest":
        write_manifest(data / "eval.jsonl", records)
        source = "{kind: manifest, dataset: mine, manifest: eval.jsonl}"
    else:
        to_hf_dataset(records).save_to_disk(str(data / "saved"))
        source = "{kind: hf_dataset, dataset: mine, path: saved, media_root: .}"
    text = (
        f"task: mine_cap\nversion: 1\nmodality: image\ntask_type: caption\nsource: {source}\nmetrics: [exact_match]\n"
    )
    task = load_task_file(write(tmp_path, "mine_cap.yaml", text))
    prepared = prepare_task(task, DataDirs({"mine": data}), tmp_path / "scratch")
    assert [s.record.id for s in prepared.samples] == ["c1", "c2"]  # only image captions, in source order
    assert prepared.samples[0].references == ["a red square", "red"]
    assert prepared.samples[0].request.media[0].source == str(data / "img" / "a.png")
    assert prepared.data["records_read"] == 4 and prepared.data["records_matching"] == 2

    fmri = load_task_file(
        write(tmp_path, "mine_fmri.yaml", text.replace("mine_cap", "mine_fmri").replace("image", "fmri"))
    )
    (sample,) = prepare_task(fmri, DataDirs({"mine": data}), tmp_path / "scratch").samples
    assert sample.request.media[0].source.shape == (16,)  # inline arrays travel as arrays
    assert sample.request.text == "Provide a one-sentence caption for the provided fMRI scan."
