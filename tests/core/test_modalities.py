"""Each modality: preprocessing from path / bytes / array to a fixed shape, and clear errors on bad input."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import soundfile
import torch
from media_factory import json_bytes, npy_bytes, png_bytes, wav_bytes

from onellm.modalities import (
    MediaError,
    default_modality_names,
    get_modality,
    marker,
    modality_names,
    resolve_modalities,
)
from onellm.modalities.point import farthest_point_sample
from onellm.modalities.video import uniform_indices
from onellm.presets import family_modalities

EIGHT = ["image", "video", "audio", "point", "depth", "normal", "imu", "fmri"]
EXTENDED = ["xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"]
ALL = EIGHT + EXTENDED
TINY = family_modalities("tiny", "all")  # every modality's tiny-preset options


def test_registry_has_fourteen_modalities_in_curriculum_order():
    assert modality_names() == ALL
    assert marker("audio") == "<audio>" and marker("timeseries") == "<timeseries>"
    with pytest.raises(KeyError, match="unknown modality 'smell'"):
        get_modality("smell")


def test_opt_in_sets():
    """OneLLM's eight are built by default; the six beyond them only when asked ("all", "extended", names)."""
    assert default_modality_names() == modality_names("onellm") == EIGHT == resolve_modalities(None)
    assert modality_names("extended") == EXTENDED == resolve_modalities("extended")
    assert resolve_modalities("all") == ALL == resolve_modalities(["default", "extended"])
    assert resolve_modalities("default,graph,image") == [*EIGHT, "graph"]  # sets in curriculum order, no repeats
    assert resolve_modalities(["tabular", "image"]) == ["tabular", "image"]  # a list keeps its order
    assert [get_modality(m).default_set for m in ALL] == [True] * 8 + [False] * 6
    with pytest.raises(KeyError, match="unknown modality 'smell'; known: image, .* \\(or all, default, onellm"):
        resolve_modalities("image,smell")
    with pytest.raises(KeyError, match="unknown modality set 'rare'"):
        modality_names("rare")
    assert list(family_modalities("tiny")) == EIGHT and list(TINY) == ALL


def test_unknown_option_is_named():
    with pytest.raises(KeyError, match="no option.*'image_sise'"):
        get_modality("image").options(image_sise=3)


@pytest.mark.parametrize("name", ALL)
def test_preprocess_path_and_bytes_give_the_fixed_shape(name, media_paths):
    modality, options = get_modality(name), TINY[name]
    from_path = modality.preprocess(media_paths[name], **options)
    from_bytes = modality.preprocess(media_paths[name].read_bytes(), **options)
    assert tuple(from_path.shape) == modality.input_shape(**options)
    assert from_path.dtype == torch.float32 and torch.isfinite(from_path).all()
    assert torch.equal(from_path, from_bytes)
    assert tuple(modality.dummy_input(**options).shape) == modality.input_shape(**options)


def test_image_resize_and_centre_crop_keeps_the_middle():
    rgb = np.zeros((20, 60, 3), np.uint8)
    rgb[:, 25:35] = 255  # a white band in the middle; the crop keeps columns 20..40
    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(rgb).save(buffer, format="PNG")
    out = get_modality("image").preprocess(buffer.getvalue(), image_size=20, mean=(0, 0, 0), std=(1, 1, 1))
    assert out.shape == (3, 20, 20)
    assert out[:, :, 6:14].min() > 0.95  # the band, centred
    assert out[:, :, :4].max() < 0.05 and out[:, :, 16:].max() < 0.05  # black on both sides


def test_image_array_input_matches_png():
    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(rgb).save(buffer, format="PNG")
    image = get_modality("image")
    assert torch.allclose(image.preprocess(rgb, image_size=32), image.preprocess(buffer.getvalue(), image_size=32))


def test_audio_resamples_other_rates_to_16k():
    audio = get_modality("audio")
    tone16 = audio.preprocess(wav_bytes(rate=16_000, freq=1000.0), target_length=128)
    tone8 = audio.preprocess(wav_bytes(rate=8_000, freq=1000.0), target_length=128)
    # The same tone at two rates: fbanks agree closely in the band below 4 kHz (8 kHz audio has nothing above).
    low = slice(0, 64)
    assert torch.corrcoef(torch.stack([tone16[0, low, 10:100].flatten(), tone8[0, low, 10:100].flatten()]))[0, 1] > 0.9


def test_audio_pads_short_and_cuts_long_clips():
    audio = get_modality("audio")
    short = audio.preprocess(wav_bytes(seconds=0.5), target_length=128)  # 0.5 s = 48 frames, rest zero padding
    assert short.shape == (1, 128, 128)
    assert torch.allclose(short[0, :, 60:], torch.full_like(short[0, :, 60:], short[0, 0, 127]))
    long = audio.preprocess(wav_bytes(seconds=3.0), target_length=128)
    assert long.shape == (1, 128, 128)


def test_audio_array_with_sample_rate_extra():
    audio = get_modality("audio")
    wave, rate = soundfile.read(io.BytesIO(wav_bytes(rate=8000)), dtype="float32")
    from_array = audio.preprocess(wave, extras={"sample_rate": rate}, target_length=128)
    from_file = audio.preprocess(wav_bytes(rate=8000), target_length=128)
    assert torch.allclose(from_array, from_file, atol=1e-5)


def test_video_samples_frames_uniformly():
    assert uniform_indices(10, 2).tolist() == [2, 7]
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_video_frames_follow_the_content(media_paths):
    frames = get_modality("video").preprocess(
        media_paths["video"], image_size=32, num_frames=2, mean=(0, 0, 0), std=(1, 1, 1)
    )
    # The red band grows from left to right over time: later frames are redder.
    assert frames[1, 0].mean() > frames[0, 0].mean() + 0.1


def test_point_cloud_is_centred_and_scaled():
    cloud = np.random.default_rng(0).random((1000, 3)).astype(np.float32) * 50 + 100
    out = get_modality("point").preprocess(cloud, num_points=256)
    assert out.shape == (256, 6)
    assert out[:, :3].norm(dim=1).max() <= 1.0 + 1e-5
    assert out[:, :3].mean(0).abs().max() < 0.1
    assert torch.allclose(out[:, 3:], torch.full((256, 3), 0.5))  # no colour given: neutral grey


def test_point_ply_ascii(tmp_path):
    ply = "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    ply += "0 0 0\n1 0 0\n0 1 0\n0 0 1\n"
    (tmp_path / "tetra.ply").write_text(ply)
    out = get_modality("point").preprocess(tmp_path / "tetra.ply", num_points=8)
    assert out.shape == (8, 6)


def test_farthest_point_sampling_spreads_out():
    xyz = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [1, 0, 0], [0.9, 0, 0], [0.5, 0, 0]]])
    assert farthest_point_sample(xyz, 3)[0].tolist() == [0, 2, 4]


def test_imu_resamples_to_the_model_rate():
    ramp = np.tile(np.arange(100, dtype=np.float32)[:, None], (1, 6))  # 100 samples at 100 Hz = 0.99 s
    out = get_modality("imu").preprocess(ramp, extras={"sample_rate": 100}, sample_rate=50, num_samples=80)
    assert out.shape == (6, 80)
    gyro = out[3]
    assert torch.allclose(gyro[:50], torch.arange(50, dtype=torch.float32) * 2)  # every other sample at 50 Hz
    assert torch.all(gyro[50:] == 0)  # zero padding after the 1 s signal


def test_imu_csv_with_timestamps(tmp_path):
    times = np.arange(40) / 20.0  # 20 Hz
    rows = np.column_stack([times, np.ones((40, 6))])
    np.savetxt(tmp_path / "imu.csv", rows, delimiter=",")
    out = get_modality("imu").preprocess(tmp_path / "imu.csv", sample_rate=10, num_samples=30)
    assert out.shape == (6, 30)
    assert int((out[4] != 0).sum()) == 20  # 1.95 s at 10 Hz -> 20 samples


def test_imu_tiny_sample_rate_is_cheap_and_bounded():
    # A client-given rate of 1e-9 Hz once built a timeline of ~1e20 samples before cutting it (MemoryError / 5 GB).
    signal = np.ones((50, 6), np.float32)
    out = get_modality("imu").preprocess(signal, extras={"sample_rate": 1e-9}, sample_rate=50, num_samples=200)
    assert out.shape == (6, 200) and torch.all(out[4] == 1)
    with pytest.raises(MediaError, match="sample_rate must be a positive number"):
        get_modality("imu").preprocess(signal, extras={"sample_rate": float("inf")}, sample_rate=50, num_samples=200)


def test_fmri_values_near_the_float32_limit_stay_finite():
    voxels = np.full(2048, 3.0e38, np.float32)
    voxels[::2] = -3.0e38
    out = get_modality("fmri").preprocess(voxels, num_voxels=2048)
    assert torch.isfinite(out).all() and torch.allclose(out.abs(), torch.ones(2048))


def test_depth_and_normal_maps_from_arrays():
    ramp = np.linspace(1, 2, 64 * 64, dtype=np.float32).reshape(64, 64)
    depth = get_modality("depth").preprocess(ramp, image_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert depth.shape == (3, 32, 32) and torch.equal(depth[0], depth[1])
    assert depth.min() >= 0 and depth.max() <= 1 and depth[0, -1].mean() > depth[0, 0].mean() + 0.9
    normal = np.zeros((16, 16, 3), np.float32)
    normal[..., 0] = -1.0
    out = get_modality("normal").preprocess(normal, image_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(out[0], torch.zeros(32, 32), atol=1e-5) and torch.allclose(out[1], torch.full((32, 32), 0.5))


@pytest.mark.parametrize("name", ["depth", "normal"])
def test_map_paired_with_its_rgb_image(tmp_path, name):
    """Option rgb_pair (OneLLM's released weights): the input is [RGB image, map], encoded like two frames."""
    modality = get_modality(name)
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(png_bytes((40, 40)))
    array = (
        np.linspace(1, 2, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
        if name == "normal"
        else (np.linspace(1, 2, 32 * 32, dtype=np.float32).reshape(32, 32))
    )
    options = {"image_size": 28, "rgb_pair": True}
    pair = modality.preprocess(array, extras={"rgb": str(rgb)}, **options)
    assert pair.shape == modality.input_shape(**options) == (2, 3, 28, 28)
    assert torch.equal(pair[0], get_modality("image").preprocess(rgb, image_size=28))
    assert torch.equal(pair[1], modality.preprocess(array, image_size=28))
    with pytest.raises(MediaError, match="RGB image") as error:
        modality.preprocess(array, **options)
    assert error.value.reason == "wrong shape"


def test_official_tokenizer_options_give_official_token_counts():
    """IMU stride 1 without bias, fMRI interleaved, point grouped on colour: token counts and class positions."""
    imu = get_modality("imu").build_tokenizer(
        16, 8, num_samples=40, kernel=10, stride=1, bias=False, class_position=True
    )
    assert imu.conv.bias is None and imu(torch.zeros(2, 6, 40), None).shape == (2, 31, 16)
    assert imu.class_position.shape == (16,)
    fmri = get_modality("fmri").build_tokenizer(16, 8, num_voxels=20, layout="interleaved", tokens=4)
    voxels = torch.randn(2, 20)
    out = fmri(voxels, None) - fmri.positions
    flat = fmri.proj(voxels)  # output c * T + t is channel c of token t
    assert out.shape == (2, 4, 16) and torch.allclose(out[:, 1, 3], flat[:, 3 * 4 + 1])
    point = get_modality("point").build_tokenizer(16, 8, num_groups=8, group_size=4, tokenizer="official")
    cloud = get_modality("point").dummy_input(num_points=64).unsqueeze(0)
    assert point(cloud, None).shape == (1, 8, 16)
    with pytest.raises(ValueError, match="layout='rows' is not one of"):
        get_modality("fmri").build_tokenizer(16, 8, layout="rows")


def test_fmri_repeated_trials_are_averaged():
    trials = np.random.default_rng(0).normal(size=(3, 2048)).astype(np.float32)
    fmri = get_modality("fmri")
    assert torch.allclose(fmri.preprocess(trials, num_voxels=2048), fmri.preprocess(trials.mean(0), num_voxels=2048))


# --- bad input: each error names the input and the problem ---------------------------------------
def _corrupt_png() -> bytes:
    data = png_bytes()
    return data[:40] + b"\x00" * 30 + data[70:100]


def _truncated_wav() -> bytes:
    data = wav_bytes(seconds=1.0)
    return data[: len(data) // 2]


BAD_INPUTS = [
    ("image", "bad.png", _corrupt_png, "not a decodable image"),
    ("image", "empty.png", lambda: b"", "file is empty"),
    ("audio", "cut.wav", _truncated_wav, "truncated WAV"),
    ("audio", "noise.wav", lambda: b"RIFX" + b"\x01" * 200, "not a decodable audio"),
    ("video", "bad.mp4", lambda: b"\x00\x00\x00\x18ftypmp42" + b"\x07" * 100, "not a decodable video"),
    (
        "point",
        "four.npy",
        lambda: npy_bytes(np.zeros((100, 4), np.float32)),
        r"\[P, 3\].*\[P, 6\].*found shape \[100, 4\]",
    ),
    ("imu", "nan.npy", lambda: npy_bytes(np.full((50, 6), np.nan, np.float32)), "NaN"),
    ("imu", "five.npy", lambda: npy_bytes(np.zeros((50, 5), np.float32)), r"\[T, 6\]"),
    ("fmri", "short.npy", lambda: npy_bytes(np.zeros(2000, np.float32)), "expected 2048 voxels, found 2000"),
    ("fmri", "text.npy", lambda: b"not numpy at all", "not a readable .npy"),
    ("depth", "blank.npy", lambda: npy_bytes(np.zeros((8, 8), np.float32)), "no valid"),
    ("xray", "pair.npy", lambda: npy_bytes(np.zeros((8, 8, 2), np.float32)), r"single-channel \[H, W\].*\[8, 8, 2\]"),
    ("xray", "cut.png", _corrupt_png, "not a decodable image"),
    ("infrared", "nan.npy", lambda: npy_bytes(np.full((8, 8), np.nan, np.float32)), "NaN"),
    ("hyperspectral", "flat.npy", lambda: npy_bytes(np.zeros((8, 8), np.float32)), r"cube \[H, W, B\]"),
    ("hyperspectral", "deep.npy", lambda: npy_bytes(np.zeros((2, 2, 2000), np.float32)), "2000 bands exceeds"),
    ("timeseries", "wide.npy", lambda: npy_bytes(np.zeros((5, 40), np.float32)), "found 40 .*transpose"),
    ("timeseries", "words.csv", lambda: b"a,b\n1,2\nx,3\n", "CSV cell 'x'"),
    ("tabular", "list.json", lambda: b"[1, 2]", "JSON object of fields, found a list"),
    ("tabular", "nested.json", lambda: b'{"size": {"w": 1}}', "field 'size' holds a dict"),
    ("tabular", "two.csv", lambda: b"a,b\n1,2\n3,4\n", "a CSV header and one row, found 3 rows"),
    ("graph", "dangling.json", lambda: b'{"nodes": [[1], [0]], "edges": [[0, 7]]}', "edge to node 7.*2 nodes"),
    ("graph", "ragged.json", lambda: b'{"nodes": [[1, 0], [1]], "edges": []}', "different feature counts"),
    ("graph", "broken.json", lambda: b'{"edges": [[0, 1]', "not a readable JSON graph"),
]


@pytest.mark.parametrize(("name", "filename", "make", "problem"), BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_input_error_names_file_and_problem(tmp_path, name, filename, make, problem):
    path = tmp_path / filename
    path.write_bytes(make())
    with pytest.raises(MediaError, match=problem) as info:
        get_modality(name).preprocess(path, **TINY[name])
    assert str(path) in str(info.value) and info.value.modality == name


def test_missing_file_is_named(tmp_path):
    with pytest.raises(MediaError, match="nowhere.png: file not found"):
        get_modality("image").preprocess(tmp_path / "nowhere.png")


def test_decompression_bomb_is_refused(tmp_path):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(path)  # 81 MP of 1-bit pixels: tiny file, huge decode
    with pytest.raises(MediaError, match="pixel limit"):
        get_modality("image").preprocess(path)


def test_media_errors_carry_a_reason_code(tmp_path):
    from onellm.modalities.base import MISSING_FILE, NAN, TOO_LONG, UNDECODABLE, WRONG_SHAPE

    cases = [
        ("image", tmp_path / "absent.png", {}, MISSING_FILE),
        ("image", b"not an image", {}, UNDECODABLE),
        ("image", np.zeros((4, 4), dtype=np.uint8), {}, WRONG_SHAPE),
        ("fmri", npy_bytes(np.full(2048, np.nan, dtype=np.float32)), {"num_voxels": 2048}, NAN),
        ("audio", wav_bytes(seconds=2.0), {"max_seconds": 1.0}, TOO_LONG),
        ("xray", tmp_path / "absent.png", {}, MISSING_FILE),
        ("infrared", b"\x89PNG broken", {}, UNDECODABLE),
        ("hyperspectral", np.zeros((4, 4, 1), np.float32), {}, WRONG_SHAPE),
        ("timeseries", np.zeros((100_001, 1), np.float32), {"max_steps": 100_000}, TOO_LONG),
        ("tabular", b'{"price": NaN}', {}, NAN),
        ("tabular", json_bytes({f"f{i}": i for i in range(9)}), {"max_fields": 8}, TOO_LONG),
        ("graph", json_bytes({"nodes": 17, "edges": []}), {"max_nodes": 16}, TOO_LONG),
        ("graph", json_bytes({"nodes": [[np.nan]], "edges": []}), {}, NAN),
    ]
    for name, source, options, reason in cases:
        with pytest.raises(MediaError) as caught:
            get_modality(name).preprocess(source, **options)
        assert caught.value.reason == reason, (name, caught.value)
    with pytest.raises(ValueError, match="reason 'typo' is not one of"):
        MediaError("image", "x.png", "bad", "typo")


def _video_features(tiny, frames: np.ndarray, temporal_pool: str) -> torch.Tensor:
    """The tiny model's pooled encoder features of one [T, H, W, 3] clip, every frame sampled."""
    model, processor = tiny
    video = get_modality("video")
    options = {**processor.options("video"), "num_frames": len(frames), "temporal_pool": temporal_pool}
    values = video.preprocess(frames, **options).unsqueeze(0)
    tokenizer = model.mm_tokenizers["video"]
    with torch.no_grad():
        encoded = model.encoder(tokenizer(values, model.encoder), getattr(tokenizer, "class_position", None))
    return video.pool_encoded(encoded, 1, **options)


def test_video_mean_pool_is_blind_to_direction_and_mean_delta_is_not(tiny):
    """A shape moving left to right and the same clip played backwards (right to left): the frame average gives
    the same tokens, `mean_delta` (average + late half - early half) tells them apart."""
    from onellm.instruct_data.synth.video import frames_for

    attrs = {"motion": "left to right", "lane": 0, "radius": 8, "colour": "red", "shape": "circle"}
    attrs["background"] = "white"
    forward = np.stack(frames_for(attrs))
    backward = forward[::-1].copy()
    assert np.array_equal(backward, np.stack(frames_for({**attrs, "motion": "right to left"})))
    mean_f, mean_b = (_video_features(tiny, clip, "mean") for clip in (forward, backward))
    delta_f, delta_b = (_video_features(tiny, clip, "mean_delta") for clip in (forward, backward))
    assert torch.allclose(mean_f, mean_b, atol=1e-5)
    gap = (delta_f - delta_b).norm() / delta_f.norm()
    assert gap > 0.05, f"mean_delta: reversed clips differ by only {gap:.4f} (relative)"


def test_video_unknown_temporal_pool_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"temporal_pool='max'.*mean_delta"):
        get_modality("video").options(temporal_pool="max")


def test_audio_tokenizer_starts_from_the_encoders_patch_embedding(tiny):
    model, _ = tiny
    encoder = model.encoder
    tokenizer = copy.deepcopy(model.mm_tokenizers["audio"])  # the session's model stays as built
    tokenizer.init_from_encoder(encoder)
    patch = encoder.parts.patch_embed
    assert torch.equal(tokenizer.positions[0], encoder.grid_positions(*tokenizer.grid))
    assert torch.equal(
        tokenizer.conv.bias, patch.bias if patch.bias is not None else torch.zeros_like(patch.weight[:, 0, 0, 0])
    )
    # a flat grey fbank patch gets the response the encoder gives a flat grey image patch (before positions)
    rows, cols = tokenizer.grid
    kernel = tokenizer.conv.kernel_size[0]
    flat = torch.full((1, 1, rows * kernel, cols * kernel), 0.7)
    with torch.no_grad():
        heard = tokenizer.conv(flat)[0, :, 0, 0]
        seen = patch(torch.full((1, 3, patch.kernel_size[0], patch.kernel_size[0]), 0.7))[0, :, 0, 0]
    assert torch.allclose(heard, seen, rtol=0.1, atol=0.05 * float(seen.abs().mean()))


def test_audio_query_grid_is_the_tokenizers_grid_of_bands_by_frames():
    """Audio's option ``query_grid`` pools the queries over regions of mel bands x frames: the grid it names is the
    one its tokenizer emits, row-major (a patch of sound at band b, frame f changes token b * cols + f alone); without
    the option it keeps the default pooling (None: runs of tokens)."""
    audio = get_modality("audio")
    options = audio.options(**{**audio.preset("small"), "query_grid": [4, 4]})
    (rows, cols), regions = audio.query_grid(**options)
    assert regions == tuple(options["query_grid"])
    tokenizer = audio.build_tokenizer(8, 14, **options)
    assert tokenizer.grid == (rows, cols)
    fbank = torch.zeros(1, *audio.input_shape(**options))
    kernel = options["kernel"]
    fbank[0, 0, 2 * kernel : 3 * kernel, 5 * kernel : 6 * kernel] = 1.0  # band 2, frame 5
    with torch.no_grad():
        changed = (tokenizer(fbank, None) - tokenizer(torch.zeros_like(fbank), None)).abs().sum(-1)[0]
    assert changed.nonzero().flatten().tolist() == [2 * cols + 5]
    assert audio.query_grid(**audio.preset("small")) is None
