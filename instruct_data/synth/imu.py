"""Synthetic IMU: a head/body-worn 6-axis sensor during one activity (.npy float32 [200, 6] at 50 Hz = 4 s).

Channels: accelerometer x, y, z (m/s^2, specific force: reads +9.81 on z when upright and still) and gyroscope
x, y, z (rad/s, right-handed; +z = counter-clockwise seen from above = a left turn). Sensor axes: x forward,
y left, z up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import QA, Generator, count_word, register_generator, save_npy

SAMPLE_RATE = 50  # Hz
STEPS = 200  # 4 s
GRAVITY = 9.81
ACTIVITIES = ("still", "walking", "running", "jumping", "turning left", "turning right", "falling")
ANSWERS = {"still": "standing still"}  # activity -> short answer, where it differs from the activity name
GERUNDS = {"still": "standing still", "falling": "falling down"}
SUBJECTS = 24  # simulated people, each with its own cadence (x0.9-1.1) and amplitude (x0.8-1.2)
TILTS = (-10, -5, 0, 5, 10)  # degrees of sensor pitch: gravity leaks into x
PACES = (0.9, 1.0, 1.1)  # step-rate factor on top of the subject's cadence (walking, running, turning)
ONSETS = {
    "jumping": (0.3, 0.6, 0.9),
    "turning left": (0.8, 1.4, 2.0),
    "turning right": (0.8, 1.4, 2.0),
    "falling": (1.0, 1.5, 2.0),
}  # seconds at which the event starts
WALK_HZ, RUN_HZ = 1.9, 2.8  # steps per second (typical adult cadence)
TURN_SECONDS = 1.0  # a 90 degree turn: half-sine yaw rate with area pi/2 -> peak pi^2 / (4 T) = 2.47 rad/s
JUMP_PERIOD = 1.0  # seconds between jump starts; a jump (crouch, push, flight, landing) takes 0.8 s
NOISE = {"acc": 0.05, "gyro": 0.01}  # sensor noise std (MEMS class)


def _subject(index: int) -> tuple[float, float]:
    """(cadence factor, amplitude factor) of simulated person ``index``, spread evenly over 0.9-1.1 / 0.8-1.2.

    The amplitude walks the subjects in steps of 7 (coprime with 24), so cadence and amplitude are not correlated.
    """
    cadence = 0.9 + 0.2 * index / (SUBJECTS - 1)
    amplitude = 0.8 + 0.4 * ((index * 7) % SUBJECTS) / (SUBJECTS - 1)
    return cadence, amplitude


def _bump(t: np.ndarray, start: float, seconds: float) -> np.ndarray:
    """Half-sine pulse of height 1 between ``start`` and ``start + seconds``."""
    inside = (t >= start) & (t < start + seconds)
    return np.where(inside, np.sin(np.pi * (t - start) / seconds), 0.0)


def signals(attrs: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """``[200, 6]`` float32: accelerometer xyz (m/s^2) then gyroscope xyz (rad/s)."""
    t = np.arange(STEPS) / SAMPLE_RATE
    activity = attrs["activity"]
    cadence, amplitude = _subject(attrs["subject"])
    cadence *= attrs.get("pace", 1.0)
    tilt = np.deg2rad(attrs["tilt"])
    acc = np.zeros((STEPS, 3))
    gyro = np.zeros((STEPS, 3))
    upright = np.array([GRAVITY * np.sin(tilt), 0.0, GRAVITY * np.cos(tilt)])
    acc[:] = upright

    def gait(hz: float, vertical: float, forward: float, sway: float, rotation: float) -> None:
        phase = 2 * np.pi * hz * cadence * t
        acc[:, 2] += vertical * amplitude * np.sin(phase)
        acc[:, 0] += forward * amplitude * np.cos(phase)
        acc[:, 1] += sway * amplitude * np.sin(phase / 2)  # side-to-side sway: one cycle per two steps
        gyro[:, 0] += rotation * np.sin(phase / 2)
        gyro[:, 1] += rotation * 0.6 * np.cos(phase)
        gyro[:, 2] += rotation * 0.3 * np.sin(phase / 2)

    if activity == "walking":
        gait(WALK_HZ, 2.0, 1.0, 0.5, 0.25)
    elif activity == "running":
        # Foot strikes are sharp: a squared sine gives impact peaks ~3x the walking ones.
        gait(RUN_HZ, 0.0, 3.0, 1.0, 0.9)
        acc[:, 2] += 14.0 * amplitude * (np.maximum(np.sin(2 * np.pi * RUN_HZ * cadence * t), 0) ** 2 - 0.25)
    elif activity in ("turning left", "turning right"):
        gait(WALK_HZ, 2.0, 1.0, 0.5, 0.25)
        sign = 1.0 if activity == "turning left" else -1.0
        yaw_rate = sign * np.pi**2 / (4 * TURN_SECONDS) * _bump(t, attrs["onset"], TURN_SECONDS)
        gyro[:, 2] += yaw_rate
        acc[:, 1] += 1.2 * yaw_rate  # centripetal pull towards the inside of the turn (~1.4 m/s walking speed)
    elif activity == "jumping":
        for jump in range(attrs["jumps"]):
            start = attrs["onset"] + jump * JUMP_PERIOD
            acc[:, 2] -= 4.0 * _bump(t, start, 0.2)  # crouch
            acc[:, 2] += 12.0 * amplitude * _bump(t, start + 0.2, 0.15)  # push off
            flight = (t >= start + 0.35) & (t < start + 0.7)
            acc[flight] = 0.0  # free fall: the accelerometer reads ~0
            acc[:, 2] += 25.0 * amplitude * _bump(t, start + 0.7, 0.1)  # landing impact
            gyro[:, 1] += 0.8 * _bump(t, start, 0.35) - 0.8 * _bump(t, start + 0.7, 0.1)
    elif activity == "falling":
        start = attrs["onset"]
        falling = (t >= start) & (t < start + 0.4)
        acc[falling] *= 0.15  # near free fall
        gyro[:, 1] += 4.7 * _bump(t, start, 0.4)  # pitching forward by ~pi/2 over 0.4 s
        impact = 30.0 * amplitude * _bump(t, start + 0.4, 0.12)
        lying = t >= start + 0.4
        acc[lying] = [GRAVITY, 0.0, 0.0]  # lying face down: gravity now along the sensor's x axis
        acc[:, 0] += impact
    acc += rng.normal(0, NOISE["acc"], acc.shape)
    gyro += rng.normal(0, NOISE["gyro"], gyro.shape)
    return np.concatenate([acc, gyro], axis=1).astype(np.float32)


@register_generator
class ImuGenerator(Generator):
    modality = "imu"

    def vocabulary(self) -> dict[str, Any]:
        return {
            "activities": list(ACTIVITIES),
            "jumps": [2, 3],
            "subjects": SUBJECTS,
            "sample_rate": SAMPLE_RATE,
            "steps": STEPS,
            "channels": ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"],
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        activity = str(rng.choice(ACTIVITIES))
        attrs: dict[str, Any] = {
            "activity": activity,
            "subject": int(rng.integers(SUBJECTS)),
            "tilt": int(rng.choice(TILTS)),
        }
        if activity in ONSETS:
            attrs["onset"] = float(rng.choice(ONSETS[activity]))
        if activity == "jumping":
            attrs["jumps"] = int(rng.choice([2, 3]))
        if activity in ("walking", "running", "turning left", "turning right"):
            attrs["pace"] = float(rng.choice(PACES))
        return attrs

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        save_npy(signals(attrs, rng), Path(root) / f"{stem}.npy")
        return {"modality": self.modality, "path": f"{stem}.npy", "sample_rate": SAMPLE_RATE}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        activity = attrs["activity"]
        if activity == "still":
            caption = "the person is standing still"
            variants = ["someone stands without moving", "the wearer is not moving", "a person standing still"]
        elif activity in ("walking", "running"):
            verb = "walk" if activity == "walking" else "run"
            caption = f"the person is {activity}"
            variants = [f"someone is {activity}", f"a person {activity} at a steady pace", f"the wearer {verb}s"]
        elif activity == "jumping":
            times = {2: "twice", 3: "three times"}[attrs["jumps"]]
            caption = f"the person jumps {times}"
            variants = [
                f"someone jumps {times}",
                f"a person jumping {count_word(attrs['jumps'])} times in a row",
                f"the wearer jumps up and lands {times}",
            ]
        elif activity.startswith("turning"):
            side = activity.split()[1]
            caption = f"the person turns {side}"
            variants = [
                f"someone walks and turns to the {side}",
                f"a person making a {side} turn",
                f"the wearer turns {side}",
            ]
        else:
            caption = "the person falls down"
            variants = ["someone falls to the ground", "a person falling over", "the wearer trips and falls"]
        variants.append(f"IMU signals of a person {GERUNDS.get(activity, activity)}")
        return caption, variants

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        activity = attrs["activity"]
        questions = [
            QA("activity", "What is the person doing?", ANSWERS.get(activity, activity)),
            QA("moving", "Is the person moving?", "no" if activity == "still" else "yes"),
            QA("fall", "Does the person fall?", "yes" if activity == "falling" else "no"),
        ]
        if activity.startswith("turning"):
            questions.append(QA("turn", "Which way does the person turn?", activity.split()[1]))
        if activity == "jumping":
            questions.append(QA("jumps", "How many times does the person jump?", str(attrs["jumps"])))
        if activity in ("walking", "running"):
            questions.append(QA("gait", "Is the person walking or running?", activity))
        return questions
