"""A tiny ray-marched 3-D scene shared by the depth and normal generators: one primitive in front of a wall.

Camera: pinhole at the origin looking down +z, 60 degree field of view, 128x128 pixels; world axes x right, y up.
Rendering = sphere tracing of signed distance functions (numpy, vectorised over the 16 384 rays), so adding a
primitive is one distance function.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import COLOURS, QA, Generator, article

SIZE = 128
FOV_DEGREES = 60.0
FOCAL = (SIZE / 2) / np.tan(np.deg2rad(FOV_DEGREES / 2))  # 110.9 px
SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
DISTANCES = {"close": 1.6, "far": 3.2}  # metres to the object centre: radius 0.35 m spans ~48 px vs ~24 px
SIDES = {"left": -1, "center": 0, "right": 1}
SIDE_OFFSET = 0.33  # x = side * 0.33 * z: the centre lands ~37 px from the image centre at any distance
WALLS = (4.5, 5.0, 5.5)  # metres to the back wall (always behind the far object)
HEIGHTS = (-0.08, 0.0, 0.08)  # vertical offset of the object as a fraction of its distance
YAWS = (0, 20, 40)  # degrees about the vertical axis
MARCH_STEPS = 64
HIT_EPSILON = 1e-3  # metres
DEPTH_NOISE_MM = 2.0  # sensor noise of the depth map (Kinect-class sensors: a few millimetres at 1-3 m)
WALL_RGB = np.array([0.78, 0.76, 0.72])
# Unit vector towards the light: upper left, behind the camera.
LIGHT = np.array([-0.4, 0.5, -0.75]) / np.linalg.norm([-0.4, 0.5, -0.75])
BOUNDING_RADIUS = 0.55  # metres; every primitive fits (cube corner 0.49, cone rim 0.49): rays missing it skip marching


@cache
def ray_directions() -> np.ndarray:
    """Unit ray directions ``[H*W, 3]`` (row-major, row 0 at the top)."""
    pixels = np.arange(SIZE) + 0.5 - SIZE / 2
    u, v = np.meshgrid(pixels, pixels)  # u: column (x), v: row (downwards)
    dirs = np.stack([u / FOCAL, -v / FOCAL, np.ones_like(u)], axis=-1).reshape(-1, 3)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def _length(*components: np.ndarray) -> np.ndarray:
    return np.sqrt(sum(c * c for c in components))


def signed_distance(shape: str, p: np.ndarray) -> np.ndarray:
    """Signed distance (metres) from points ``[N, 3]`` in object coordinates to a primitive of radius ~0.35 m."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    if shape == "sphere":
        return _length(x, y, z) - 0.35
    if shape == "cube":
        q = np.abs(p) - 0.28
        outside = _length(*(np.maximum(q, 0.0).T))
        return outside + np.minimum(q.max(axis=1), 0.0)
    if shape == "cylinder":  # vertical axis, radius 0.3, half-height 0.35
        d1, d2 = _length(x, z) - 0.3, np.abs(y) - 0.35
        return np.minimum(np.maximum(d1, d2), 0.0) + _length(np.maximum(d1, 0.0), np.maximum(d2, 0.0))
    if shape == "cone":  # apex up at y=+0.35, base radius 0.35 at y=-0.35
        height, radius = 0.7, 0.35
        qx, qy = radius, -height  # apex -> base rim, in (radial, y) coordinates with the apex at the origin
        wx, wy = _length(x, z), y - 0.35
        t = np.clip((wx * qx + wy * qy) / (qx * qx + qy * qy), 0.0, 1.0)
        ax, ay = wx - qx * t, wy - qy * t  # nearest point on the slanted side
        bx, by = wx - qx * np.clip(wx / qx, 0.0, 1.0), wy - qy  # nearest point on the base disc
        distance = np.sqrt(np.minimum(ax * ax + ay * ay, bx * bx + by * by))
        inside = np.maximum(-(wx * qy - wy * qx), -(wy - qy)) < 0  # k = sign(qy) = -1 in the usual formula
        return np.where(inside, -distance, distance)
    if shape == "torus":  # ring facing the camera: major radius 0.26, tube radius 0.1
        return _length(_length(x, y) - 0.26, z) - 0.1
    raise ValueError(f"unknown 3-D shape {shape!r}; known: {', '.join(SHAPES)}")


def render_scene(attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth ``[H, W]`` (metres, along the optical axis), normals ``[H, W, 3]`` (camera frame: x right, y up, z
    towards the viewer, unit length) and a shaded RGB view ``[H, W, 3]`` in [0, 1]."""
    dirs = ray_directions()
    distance = DISTANCES[attrs["distance"]]
    centre = np.array([SIDES[attrs["side"]] * SIDE_OFFSET * distance, attrs["height"] * distance, distance])
    yaw = np.deg2rad(attrs["yaw"])
    # World -> object rotation about the vertical axis.
    rotation = np.array([[np.cos(yaw), 0, -np.sin(yaw)], [0, 1, 0], [np.sin(yaw), 0, np.cos(yaw)]])

    def sdf(points: np.ndarray) -> np.ndarray:
        return signed_distance(attrs["shape"], (points - centre) @ rotation.T)

    wall_t = attrs["wall"] / dirs[:, 2]
    # Only rays passing within BOUNDING_RADIUS of the centre can hit (~10-20% of them): march those alone, and drop
    # each ray from the working set as soon as it converges or passes the wall (most converge in ~10 steps).
    along = dirs @ centre
    candidates = np.flatnonzero(np.linalg.norm(centre - along[:, None] * dirs, axis=1) < BOUNDING_RADIUS)
    sub_dirs, sub_wall = dirs[candidates], wall_t[candidates]
    sub_t = np.full(len(candidates), 0.3)  # start 0.3 m from the camera (closest surface: ~1.25 m)
    sub_hit = np.zeros(len(candidates), dtype=bool)
    live = np.arange(len(candidates))
    for _ in range(MARCH_STEPS):
        if live.size == 0:
            break
        d = sdf(sub_dirs[live] * sub_t[live, None])
        converged = d < HIT_EPSILON
        sub_hit[live[converged]] = True
        sub_t[live] += np.maximum(d, 0.0)
        live = live[~converged & (sub_t[live] < sub_wall[live])]
    sub_hit &= sub_t < sub_wall
    hit = np.zeros(len(dirs), dtype=bool)
    hit[candidates[sub_hit]] = True
    t = wall_t.copy()
    t[candidates[sub_hit]] = sub_t[sub_hit]
    points = dirs * t[:, None]

    normals = np.tile([0.0, 0.0, -1.0], (len(dirs), 1))  # the wall faces the camera
    if hit.any():
        p, eps = points[hit], 1e-4
        grad = np.stack([sdf(p + e) - sdf(p - e) for e in np.eye(3) * eps], axis=1)
        normals[hit] = grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)

    albedo = np.where(hit[:, None], np.asarray(COLOURS[attrs["colour"]]) / 255, WALL_RGB)
    shading = 0.3 + 0.7 * np.clip(normals @ LIGHT, 0.0, 1.0)  # ambient + Lambert
    rgb = np.clip(albedo * shading[:, None], 0, 1)

    depth = points[:, 2].reshape(SIZE, SIZE)
    camera_normals = normals * np.array([1.0, 1.0, -1.0])  # world z forward -> camera z towards the viewer
    return depth, camera_normals.reshape(SIZE, SIZE, 3), rgb.reshape(SIZE, SIZE, 3)


DISTANCE_PHRASES = {"close": "close to the camera", "far": "far from the camera"}
SIDE_PHRASES = {side: f"at the {side}" for side in SIDES}  # one preposition for every side (image.POSITION_PHRASES)


class SceneGenerator(Generator):
    """Shared vocabulary, sampling and language of the depth and normal generators (subclasses render)."""

    map_name = ""  # "depth map" / "surface normal map", used in paraphrases

    def vocabulary(self) -> dict[str, Any]:
        return {
            "shapes": list(SHAPES),
            "distances": {name: metres for name, metres in DISTANCES.items()},
            "sides": list(SIDES),
            "object_colors_rgb_only": list(COLOURS),
            "wall_metres": list(WALLS),
            "resolution": [SIZE, SIZE],
            "field_of_view_degrees": FOV_DEGREES,
        }

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "shape": str(rng.choice(SHAPES)),
            "distance": str(rng.choice(list(DISTANCES))),
            "side": str(rng.choice(list(SIDES))),
            # Below: seen in the paired RGB / geometry but not named in the text.
            "colour": str(rng.choice(list(COLOURS))),
            "wall": float(rng.choice(WALLS)),
            "height": float(rng.choice(HEIGHTS)),
            "yaw": int(rng.choice(YAWS)),
        }

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        shape, distance, side = attrs["shape"], attrs["distance"], attrs["side"]
        thing = f"{article(shape)} {shape}"
        caption = f"{thing} {DISTANCE_PHRASES[distance]} {SIDE_PHRASES[side]}"
        near = "near the camera" if distance == "close" else "far away from the camera"
        return caption, [
            f"{article(self.map_name)} {self.map_name} of {caption}",
            f"{thing} {SIDE_PHRASES[side]}, {DISTANCE_PHRASES[distance]}",
            f"there is {thing} {SIDE_PHRASES[side]}, {near}",
            f"{thing} in front of a wall, {DISTANCE_PHRASES[distance]} {SIDE_PHRASES[side]}",
        ]

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        shape, distance, side = attrs["shape"], attrs["distance"], attrs["side"]
        questions = [
            QA("shape", "What object is in front of the wall?", shape),
            QA("distance", "Is the object close to the camera or far from it?", distance),
            QA("side", "On which side is the object: left, center or right?", side),
        ]
        asked = shape if rng.random() < 0.5 else [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
        questions.append(QA("presence", f"Is there {article(asked)} {asked}?", "yes" if asked == shape else "no"))
        return questions
