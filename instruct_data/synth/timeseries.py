"""Synthetic multichannel time series: 1-4 sensor channels sharing a trend, with optional seasonality and spikes in
one channel (.npy float32 or headerless .csv, [T, C], rows = time steps).

Each channel: its own level and scale (a temperature near 20, a pressure near 1000, ...), a common trend (rising,
falling or flat: +-3 of the channel's scale over the series), a repeating pattern (a sine of 4 periods) or none, and
noise of 0.15 scale. Spikes: 1-3 sharp peaks of +6 scale in one channel, at least a tenth of the series apart. The
length T (96, 160 or 240 steps) and the file format are measurement keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import QA, Generator, count_word, register_generator, save_npy

TRENDS = ("rising", "falling", "flat")
STEPS = (96, 160, 240)
FORMATS = ("npy", "csv")
MAX_CHANNELS = 4
LEVELS = (20.0, 1000.0, 0.0, 50.0)  # per channel index: a temperature, a pressure, a centred signal, a percentage
SCALES = (2.0, 15.0, 1.0, 8.0)
PHASES = 8  # sine phases (eighths of a period): content jitter
SPIKE = 6.0  # spike height in channel scales (noise is 0.15): unmistakable at any length
SLOTS = 10  # spike positions: slots of a tenth of the series (never the first one)
ORDINALS = {1: "one", 2: "two", 3: "three", 4: "four"}


def series(attrs: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """``[T, C]`` float32."""
    steps, channels = attrs["steps"], attrs["channels"]
    t = np.linspace(0.0, 1.0, steps)
    trend = {"rising": 3.0 * t, "falling": -3.0 * t, "flat": 0.0 * t}[attrs["trend"]]
    out = np.zeros((steps, channels))
    for c in range(channels):
        shape = trend.copy()
        if attrs["seasonal"]:
            shape += np.sin(2 * np.pi * (4 * t + attrs["phase"] / PHASES + c / 4))
        if attrs["spikes"] and c + 1 == attrs["spike_channel"]:
            for slot in attrs["spike_slots"]:
                peak = int((slot + 0.5) / SLOTS * steps)
                shape[peak - 1 : peak + 2] += SPIKE * np.array([0.5, 1.0, 0.5])  # 3 steps wide: survives resampling
        shape += rng.normal(0, 0.15, steps)
        out[:, c] = LEVELS[c] + SCALES[c] * shape
    return out.astype(np.float32)


@register_generator
class TimeSeriesGenerator(Generator):
    modality = "timeseries"
    measurement_keys = ("steps", "format")

    def vocabulary(self) -> dict[str, Any]:
        return {
            "channels": [1, MAX_CHANNELS],
            "trends": list(TRENDS),
            "spikes": [0, 3],
            "steps": list(STEPS),
            "formats": list(FORMATS),
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        channels = int(rng.integers(1, MAX_CHANNELS + 1))
        spikes = int(rng.integers(0, 4))
        attrs: dict[str, Any] = {
            "channels": channels,
            "trend": str(rng.choice(TRENDS)),
            "seasonal": bool(rng.random() < 0.5),
            "phase": int(rng.integers(PHASES)),
            "spikes": spikes,
        }
        if spikes:
            attrs["spike_channel"] = int(rng.integers(1, channels + 1))
            attrs["spike_slots"] = sorted(int(s) for s in rng.choice(np.arange(1, SLOTS), size=spikes, replace=False))
        attrs["steps"] = int(rng.choice(STEPS))
        attrs["format"] = str(rng.choice(FORMATS))
        return attrs

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        values = series(attrs, rng)
        path = Path(root) / f"{stem}.{attrs['format']}"
        if attrs["format"] == "csv":
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(path, values, delimiter=",", fmt="%.6g")  # headerless: what np.loadtxt and servers read
        else:
            save_npy(values, path)
        return {"modality": self.modality, "path": f"{stem}.{attrs['format']}"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        n, trend = attrs["channels"], attrs["trend"]
        channels = "one channel" if n == 1 else f"{count_word(n)} channels"
        pattern = " and a repeating pattern" if attrs["seasonal"] else ""
        trend_phrase = "no trend" if trend == "flat" else f"a {trend} trend"
        if attrs["spikes"]:
            times = {1: "one spike", 2: "two spikes", 3: "three spikes"}[attrs["spikes"]]
            where = "it" if n == 1 else f"channel {ORDINALS[attrs['spike_channel']]}"
            spikes = f"; {where} has {times}"
        else:
            spikes = "; no spikes"
        caption = f"{channels} with {trend_phrase}{pattern}{spikes}"
        paraphrases = [
            f"a time series of {channels} with {trend_phrase}{pattern}{spikes}",
            f"{channels}, {trend if trend != 'flat' else 'flat'}{', periodic' if attrs['seasonal'] else ''}{spikes}",
            f"sensor readings: {channels} with {trend_phrase}{pattern}{spikes}",
        ]
        return caption, paraphrases

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        questions = [
            QA("channels", "How many channels are there?", str(attrs["channels"])),
            QA("trend", "Is the trend rising, falling or flat?", attrs["trend"]),
            QA("spikes", "How many spikes are there?", str(attrs["spikes"])),
            QA("seasonal", "Is there a repeating pattern?", "yes" if attrs["seasonal"] else "no"),
        ]
        if attrs["spikes"] and attrs["channels"] > 1:
            questions.append(QA("spike_channel", "Which channel has spikes?", f"channel {attrs['spike_channel']}"))
        return questions
