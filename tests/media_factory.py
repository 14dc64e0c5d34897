"""Small, valid media files of every modality, made in memory (no downloads). Importable by tests."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import soundfile
from PIL import Image


def png_bytes(size: tuple[int, int] = (40, 48), seed: int = 0) -> bytes:
    rgb = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(seconds: float = 1.5, rate: int = 16_000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(
        buffer, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16"
    )
    return buffer.getvalue()


def mp4_bytes(frames: int = 6, size: int = 48) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[:, : (i + 1) * size // frames] = (200, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def depth_png_bytes(size: int = 40) -> bytes:
    depth = np.tile(np.linspace(500, 3000, size, dtype=np.uint16), (size, 1))
    buffer = io.BytesIO()
    Image.fromarray(depth).save(buffer, format="PNG")
    return buffer.getvalue()


def normal_png_bytes(size: int = 40) -> bytes:
    normals = np.zeros((size, size, 3), np.float32)
    normals[..., 2] = 1.0
    buffer = io.BytesIO()
    Image.fromarray(((normals + 1) / 2 * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def grey16_png_bytes(size: tuple[int, int] = (40, 48), seed: int = 0, low: int = 1000, high: int = 40_000) -> bytes:
    """A 16-bit single-channel PNG (an X-ray's detector counts, an infrared camera's centi-kelvin)."""
    grey = np.random.default_rng(seed).integers(low, high, (size[1], size[0])).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def series_csv_bytes(steps: int = 120, channels: int = 3, header: bool = True) -> bytes:
    """A time series as CSV: one row per step, one column per channel, a header row of channel names."""
    t = np.arange(steps)[:, None]
    values = np.sin(t / (5.0 + np.arange(channels))) * (1 + np.arange(channels)) + t * 0.01
    lines = [",".join(f"ch{c}" for c in range(channels))] if header else []
    lines += [",".join(f"{v:.5f}" for v in row) for row in values]
    return ("\n".join(lines) + "\n").encode()


def json_bytes(data: object) -> bytes:
    return json.dumps(data).encode()


GRAPH = {"nodes": [[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], "edges": [[0, 1], [1, 2], [2, 0], [2, 3], [3, 4]]}
ROW = {"age": 41, "height": 1.82, "city": "Oslo", "member": True, "note": None}

# One valid file per modality, named as a user would name it. The fMRI length matches the tiny preset (2048).
SAMPLE_FILES = {
    "image": ("cat.png", lambda: png_bytes()),
    "video": ("clip.mp4", lambda: mp4_bytes()),
    "audio": ("tone.wav", lambda: wav_bytes()),
    "point": ("chair.npy", lambda: npy_bytes(np.random.default_rng(0).random((500, 6)).astype(np.float32))),
    "depth": ("depth.png", lambda: depth_png_bytes()),
    "normal": ("normal.png", lambda: normal_png_bytes()),
    "imu": ("walk.npy", lambda: npy_bytes(np.random.default_rng(1).normal(size=(300, 6)).astype(np.float32))),
    "fmri": ("scan.npy", lambda: npy_bytes(np.random.default_rng(2).normal(size=2048).astype(np.float32))),
    # The six beyond OneLLM's eight (opt-in: the tiny preset builds them with modalities="all").
    "xray": ("chest.png", lambda: grey16_png_bytes(seed=3)),
    "infrared": ("thermal.png", lambda: grey16_png_bytes(seed=4, low=28_000, high=33_000)),
    "hyperspectral": ("field.npy", lambda: npy_bytes(np.random.default_rng(5).random((20, 24, 40)).astype(np.float32))),
    "timeseries": ("sensors.csv", lambda: series_csv_bytes()),
    "tabular": ("row.json", lambda: json_bytes(ROW)),
    "graph": ("molecule.json", lambda: json_bytes(GRAPH)),
}
