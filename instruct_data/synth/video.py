"""Synthetic videos: one shape that moves, grows, shrinks or changes colour (MP4, 8 frames of 64x64, yuv420p)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from onellm.instruct_data.synth.base import BACKGROUNDS, COLOURS, QA, Generator, article, draw_shape, register_generator

SIZE = 64
FRAMES = 8
FPS = 8  # 8 frames at 8 fps = a 1 s clip
# MPEG-4 Part 2 ships in every FFmpeg build PyAV links; H.264 only where libx264 was compiled in. Both encode
# deterministically with one thread. 400 kb/s is far above what 64x64x8 needs, so colours survive the encode.
CODECS = ("mpeg4", "libx264")
BIT_RATE = 400_000
SHAPES = ("circle", "square", "triangle", "star", "diamond")
MOTIONS = ("left to right", "right to left", "up", "down", "grow", "shrink", "change color")
MOVES = MOTIONS[:4]
LANES = (-10, 0, 10)  # pixels off the frame's centre line, across the direction of travel
TRAVEL = (14, 50)  # start/end coordinate of a moving shape's centre
RADII = (8, 11)
GROW = (5, 15)  # radius at the first / last frame of "grow" (reversed for "shrink")


@cache
def video_codec() -> str:
    """The first of :data:`CODECS` this PyAV can encode."""
    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # PyAV raises UnknownCodecError (a ValueError) or FFmpegError depending on the version
            continue
    raise RuntimeError(
        f"PyAV {av.__version__} has none of the video encoders {CODECS}; install an FFmpeg build with one"
    )


def frames_for(attrs: dict[str, Any]) -> list[np.ndarray]:
    """The ``FRAMES`` RGB frames ``[64, 64, 3]`` uint8 of a video with these attributes."""
    motion, lane = attrs["motion"], attrs["lane"]
    frames = []
    for t in np.linspace(0.0, 1.0, FRAMES):
        cx = cy = SIZE / 2
        radius, colour = attrs["radius"], attrs["colour"]
        start, end = TRAVEL
        if motion == "left to right":
            cx, cy = start + (end - start) * t, SIZE / 2 + lane
        elif motion == "right to left":
            cx, cy = end - (end - start) * t, SIZE / 2 + lane
        elif motion == "up":  # image rows grow downwards: moving up = decreasing y
            cx, cy = SIZE / 2 + lane, end - (end - start) * t
        elif motion == "down":
            cx, cy = SIZE / 2 + lane, start + (end - start) * t
        elif motion in ("grow", "shrink"):
            small, large = GROW
            radius = small + (large - small) * (t if motion == "grow" else 1 - t)
            cx += lane
        elif motion == "change color":
            colour = attrs["colour"] if t < 0.5 else attrs["colour_to"]
            cx += lane
        image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[attrs["background"]])
        draw_shape(ImageDraw.Draw(image), attrs["shape"], cx, cy, radius, COLOURS[colour])
        frames.append(np.asarray(image))
    return frames


def write_mp4(frames: list[np.ndarray], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(video_codec(), rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.bit_rate = BIT_RATE
        stream.codec_context.thread_count = 1  # one thread: identical bytes on every run
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@register_generator
class VideoGenerator(Generator):
    modality = "video"

    def vocabulary(self) -> dict[str, Any]:
        return {
            "shapes": list(SHAPES),
            "colors": list(COLOURS),
            "motions": list(MOTIONS),
            "backgrounds": list(BACKGROUNDS),
            "frames": FRAMES,
            "fps": FPS,
            "resolution": [SIZE, SIZE],
            "codec": video_codec(),
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        attrs = {
            "shape": str(rng.choice(SHAPES)),
            "colour": str(rng.choice(list(COLOURS))),
            "motion": str(rng.choice(MOTIONS)),
            "background": str(rng.choice(list(BACKGROUNDS))),
            "lane": int(rng.choice(LANES)),
            "radius": int(rng.choice(RADII)),
        }
        if attrs["motion"] == "change color":
            attrs["colour_to"] = str(rng.choice([c for c in COLOURS if c != attrs["colour"]]))
        return attrs

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        write_mp4(frames_for(attrs), Path(root) / f"{stem}.mp4")
        return {"modality": self.modality, "path": f"{stem}.mp4"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        shape, colour, motion = attrs["shape"], attrs["colour"], attrs["motion"]
        thing = f"{article(colour)} {colour} {shape}"
        if motion in ("left to right", "right to left"):
            caption = f"{thing} moves from {motion}"
            side_from, side_to = motion.split(" to ")
            variants = [
                f"{thing} slides from the {side_from} side to the {side_to} side",
                f"a video of {thing} moving from {motion}",
                f"{thing} travels across the frame from {motion}",
                f"the {colour} {shape} moves {'rightwards' if side_to == 'right' else 'leftwards'}",
            ]
        elif motion in ("up", "down"):
            caption = f"{thing} moves {motion}"
            variants = [
                f"{thing} moves {motion}wards",
                f"a video of {thing} moving {motion}",
                f"{thing} travels {'from the bottom to the top' if motion == 'up' else 'from the top to the bottom'}",
                f"the {colour} {shape} slides {motion}",
            ]
        elif motion in ("grow", "shrink"):
            caption = f"{thing} grows larger" if motion == "grow" else f"{thing} shrinks"
            bigger = "bigger" if motion == "grow" else "smaller"
            variants = [
                f"{thing} gets {bigger}",
                f"a video of {thing} {'growing' if motion == 'grow' else 'shrinking'}",
                f"the {colour} {shape} becomes {bigger} over time",
                f"{thing} {'expands' if motion == 'grow' else 'contracts'} in place",
            ]
        else:
            to = attrs["colour_to"]
            caption = f"{thing} changes color from {colour} to {to}"
            variants = [
                f"{thing} turns {to}",
                f"a video of {article(shape)} {shape} changing from {colour} to {to}",
                f"the {shape} is {colour} at first and then {to}",
                f"{thing} switches its color to {to}",
            ]
        return caption, variants

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        shape, motion = attrs["shape"], attrs["motion"]
        questions = [
            QA("shape", "What shape is in the video?", shape),
            QA("moving", f"Does the {shape} move across the frame?", "yes" if motion in MOVES else "no"),
        ]
        if motion == "change color":
            questions += [
                QA("color", f"What color is the {shape} at the start?", attrs["colour"]),
                QA("color_end", f"What color does the {shape} turn into?", attrs["colour_to"]),
            ]
        else:
            questions.append(QA("color", f"What color is the {shape}?", attrs["colour"]))
        if motion in MOVES:
            questions.append(QA("direction", f"Which direction does the {shape} move?", motion))
        if motion in ("grow", "shrink"):
            answer = "bigger" if motion == "grow" else "smaller"
            questions.append(QA("size_change", f"Does the {shape} get bigger or smaller?", answer))
        return questions
