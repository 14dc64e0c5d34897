"""Synthetic audio: pulses (beeps), steady tones, rising/falling sweeps, noise bursts, chords (16 kHz mono PCM16 WAV, 2 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from onellm.instruct_data.synth.base import QA, Generator, count_word, register_generator

SAMPLE_RATE = 16_000
DURATION = 2.0  # seconds -> 32 000 samples
# Each kind is one token of SmolLM2's vocabulary and said only of itself, so a word slot can name it (projectors/
# upm.py): "beeps" is two tokens ("Ġbe", "eps"), which no slot can name, and sweeps and chords were captioned with
# "tone", so the slots named "tone" for them and LoRA answered "tone" for every kind (BENCHMARKS.md, "The demo",
# 2026-12-06 midday; corpus 1.5).
KINDS = ("pulses", "tone", "sweep", "noise", "chord")
PITCHES = {"low": 250.0, "medium": 700.0, "high": 2000.0}  # Hz; a factor of ~3 apart, unmistakable by ear
PULSE_LENGTHS = {"short": 0.1, "long": 0.25}  # seconds
SPACING = 0.4  # seconds between pulse / burst onsets: 4 long pulses from a 0.3 s onset end at 1.75 s < 2 s
SUSTAIN = 1.2  # seconds of a tone, sweep or chord
SWEEP_RANGE = (300.0, 2500.0)  # Hz, exponential sweep (constant rate in octaves)
NOISE_BURST = 0.15  # seconds
ONSETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # seconds of silence before the first event
LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7)  # peak amplitude (full scale = 1)
DETUNE = (-0.04, -0.02, 0.0, 0.02, 0.04)  # relative frequency offset: variety without crossing pitch classes
RAMP = 0.005  # 5 ms raised-cosine fades: no clicks at event edges
CHORD_RATIOS = (1.0, 1.26, 1.5)  # root, major third, fifth
BACKGROUND_NOISE = 0.003  # hiss under everything, so silence is not exact zeros


def times(n: int) -> str:
    """How often something is heard: once, twice, three times..."""
    return {1: "once", 2: "twice"}.get(n, f"{count_word(n)} times")


def _envelope(n: int) -> np.ndarray:
    ramp = min(int(RAMP * SAMPLE_RATE), n // 2)
    env = np.ones(n)
    if ramp:
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        env[:ramp], env[n - ramp :] = fade, fade[::-1]
    return env


def _tone(freq: float | np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    freq = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE  # integrating the frequency keeps sweeps continuous
    return np.sin(phase) * _envelope(n)


def waveform(attrs: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The float waveform ``[32000]`` in [-1, 1] of a clip with these attributes."""
    total = int(DURATION * SAMPLE_RATE)
    out = rng.normal(0.0, BACKGROUND_NOISE, total)
    kind, onset, level = attrs["kind"], attrs["onset"], attrs["level"]
    detune = 1 + attrs.get("detune", 0.0)
    freq = PITCHES.get(attrs.get("pitch", ""), 0.0) * detune
    events: list[tuple[float, np.ndarray]] = []
    if kind == "pulses":
        events = [(onset + i * SPACING, _tone(freq, PULSE_LENGTHS[attrs["length"]])) for i in range(attrs["count"])]
    elif kind == "tone":
        events = [(onset, _tone(freq, SUSTAIN))]
    elif kind == "chord":
        chord = sum(_tone(freq * ratio, SUSTAIN) for ratio in CHORD_RATIOS) / len(CHORD_RATIOS)
        events = [(onset, chord)]
    elif kind == "sweep":
        low, high = SWEEP_RANGE
        curve = detune * low * (high / low) ** np.linspace(0, 1, int(SUSTAIN * SAMPLE_RATE))
        events = [(onset, _tone(curve if attrs["direction"] == "rising" else curve[::-1], SUSTAIN))]
    elif kind == "noise":
        n = int(NOISE_BURST * SAMPLE_RATE)
        events = [
            (onset + i * SPACING, np.clip(rng.normal(0, 0.4, n), -1, 1) * _envelope(n)) for i in range(attrs["count"])
        ]
    for start, signal in events:
        begin = int(start * SAMPLE_RATE)
        out[begin : begin + len(signal)] += level * signal[: total - begin]
    return np.clip(out, -1.0, 1.0)


@register_generator
class AudioGenerator(Generator):
    modality = "audio"

    def vocabulary(self) -> dict[str, Any]:
        return {
            "kinds": list(KINDS),
            "pitches": {name: hz for name, hz in PITCHES.items()},
            "pulse_lengths": list(PULSE_LENGTHS),
            "counts": [1, 2, 3, 4],
            "sweep_directions": ["rising", "falling"],
            "sample_rate": SAMPLE_RATE,
            "seconds": DURATION,
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        kind = str(rng.choice(KINDS))
        attrs: dict[str, Any] = {"kind": kind}
        if kind in ("pulses", "noise"):
            attrs["count"] = int(rng.integers(1, 5))
        if kind in ("pulses", "tone", "chord"):
            attrs["pitch"] = str(rng.choice(list(PITCHES)))
        if kind == "pulses":
            attrs["length"] = str(rng.choice(list(PULSE_LENGTHS)))
        if kind == "sweep":
            attrs["direction"] = str(rng.choice(["rising", "falling"]))
        attrs.update(onset=float(rng.choice(ONSETS)), level=float(rng.choice(LEVELS)))
        if kind != "noise":  # noise has no pitch to detune
            attrs["detune"] = float(rng.choice(DETUNE))
        return attrs

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        path = Path(root) / f"{stem}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, waveform(attrs, rng), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return {"modality": self.modality, "path": f"{stem}.wav"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        kind = attrs["kind"]
        pitch = attrs.get("pitch", "")
        # Each caption says first what the small preset hears best (pitch, length, kind) and the count last (its 16
        # time steps of 160 ms blur it). With the count first ("four long ... beeps", corpus 1.3), a greedy
        # decoder chose the first word without knowing the count, said "a" and went on as a chord or a tone: 5 of
        # 186 test captions of beeps said "beep", while the kind question was answered "beeps" 74 times in 100
        # (BENCHMARKS.md, "The demo", 2026-12-06). Each kind's word (KINDS) is said of that kind only.
        if kind == "pulses":
            n, length = attrs["count"], attrs["length"]
            many = "s" if n > 1 else ""
            amount = "a single" if n == 1 else count_word(n)
            caption = f"a {pitch}-pitched {length} pulse heard {times(n)}"
            variants = [
                f"{amount} {length} {pitch}-pitched pulse{many}",
                f"a {pitch}-pitched pulse repeated {count_word(n)} time{many}"
                if n > 1
                else f"one {length} {pitch} pulse",
                f"{amount} {length} electronic pulse{many} with a {pitch} pitch",
                f"the sound of {count_word(n)} {pitch} pulse{many}",
            ]
        elif kind == "tone":
            caption = f"a steady {pitch}-pitched tone"
            variants = [
                f"a constant {pitch} tone",
                f"a single {pitch}-pitched note held steadily",
                f"a {pitch} pure tone that does not change",
                f"the sound of a steady {pitch} tone",
            ]
        elif kind == "chord":
            caption = f"a {pitch}-pitched chord of three notes"
            variants = [
                f"three {pitch} notes played together",
                f"a {pitch} chord",
                f"a chord in a {pitch} register",
                f"several {pitch}-pitched notes sounding at once",
            ]
        elif kind == "sweep":
            rising = attrs["direction"] == "rising"
            caption = f"a sweep {'rising' if rising else 'falling'} in pitch"
            variants = [
                f"a {'rising' if rising else 'falling'} sweep",
                f"a sweep from {'low to high' if rising else 'high to low'}",
                f"a pitch that goes {'up' if rising else 'down'} steadily",
                f"a {'rising' if rising else 'falling'} siren-like sweep",
            ]
        else:
            n = attrs["count"]
            caption = f"a burst of noise heard {times(n)}"
            variants = [
                "a single burst of noise" if n == 1 else f"{count_word(n)} bursts of noise",
                f"{count_word(n)} short burst{'s' if n > 1 else ''} of static",
                f"a hiss heard {count_word(n)} time{'s' if n > 1 else ''}",
                f"white noise in {count_word(n)} short burst{'s' if n > 1 else ''}",
            ]
        return caption, variants

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        kind = attrs["kind"]
        questions = [
            QA("kind", "What kind of sound is it: pulses, tone, sweep, noise or chord?", kind),
            QA("noise", "Is there a burst of noise?", "yes" if kind == "noise" else "no"),
        ]
        if kind == "pulses":
            questions += [
                QA("count", "How many pulses are there?", str(attrs["count"])),
                QA("length", "Are the pulses short or long?", attrs["length"]),
            ]
        if kind == "noise":
            questions.append(QA("count", "How many bursts of noise are there?", str(attrs["count"])))
        if "pitch" in attrs:
            questions.append(QA("pitch", "Is the pitch low, medium or high?", attrs["pitch"]))
        if kind != "noise":
            trend = {"rising": "rise", "falling": "fall"}.get(attrs.get("direction", ""), "stay the same")
            questions.append(QA("trend", "Does the pitch rise, fall or stay the same?", trend))
        return questions
