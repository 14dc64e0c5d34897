"""Synthetic graphs: 4-10 coloured nodes, a random tree plus 0-2 extra edges (.json ``{"nodes", "edges"}``).

Node features are a one-hot colour (red, green, blue, yellow). A tree has no cycle; each extra edge closes one. The
most connected node is unique (draws with a tie are redrawn), so "the most connected node" names one node. The edge
list's order and the direction of each pair are shuffled when the file is written (the graph is the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from onellm.instruct_data.synth.base import QA, Generator, count_word, register_generator

COLOURS = ("red", "green", "blue", "yellow")  # node features: one-hot over these
NODES = (4, 10)  # inclusive range
EXTRA_EDGES = (0, 1, 2)


def degrees(attrs: dict[str, Any]) -> list[int]:
    counts = [0] * len(attrs["colours"])
    for i, j in attrs["edges"]:
        counts[i] += 1
        counts[j] += 1
    return counts


def hub(attrs: dict[str, Any]) -> int:
    """The most connected node (unique by construction)."""
    counts = degrees(attrs)
    return counts.index(max(counts))


def has_cycle(attrs: dict[str, Any]) -> bool:
    """A connected simple graph has a cycle iff it has at least as many edges as nodes."""
    return len(attrs["edges"]) >= len(attrs["colours"])


@register_generator
class GraphGenerator(Generator):
    modality = "graph"

    def vocabulary(self) -> dict[str, Any]:
        return {"colors": list(COLOURS), "nodes": list(NODES), "extra_edges": list(EXTRA_EDGES)}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        while True:
            count = int(rng.integers(NODES[0], NODES[1] + 1))
            edges = {(int(rng.integers(i)), i) for i in range(1, count)}  # a random recursive tree: connected
            candidates = [(i, j) for i in range(count) for j in range(i + 1, count) if (i, j) not in edges]
            extra = min(int(rng.choice(EXTRA_EDGES)), len(candidates))
            for index in rng.choice(len(candidates), size=extra, replace=False):
                edges.add(candidates[index])
            attrs = {
                "colours": [str(c) for c in rng.choice(COLOURS, size=count)],
                "edges": [list(edge) for edge in sorted(edges)],
            }
            counts = degrees(attrs)
            if counts.count(max(counts)) == 1:
                return attrs

    def render(self, attrs: dict[str, Any], rng: np.random.Generator, root: Path, stem: str) -> dict[str, Any]:
        nodes = [[1.0 if colour == c else 0.0 for c in COLOURS] for colour in attrs["colours"]]
        edges = [edge[::-1] if rng.random() < 0.5 else edge for edge in attrs["edges"]]
        edges = [edges[i] for i in rng.permutation(len(edges))]
        path = Path(root) / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"nodes": nodes, "edges": edges}) + "\n", encoding="utf-8")
        return {"modality": self.modality, "path": f"{stem}.json"}

    def captions(self, attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
        n, e = len(attrs["colours"]), len(attrs["edges"])
        cycle = "with a cycle" if has_cycle(attrs) else "without cycles"
        colour = attrs["colours"][hub(attrs)]
        caption = (
            f"a graph of {count_word(n)} nodes and {count_word(e)} edges {cycle}; the most connected node is {colour}"
        )
        paraphrases = [
            f"{count_word(n)} nodes joined by {count_word(e)} edges {cycle}, centred on a {colour} node",
            f"a {'cyclic' if has_cycle(attrs) else 'tree-shaped'} graph of {count_word(n)} nodes whose hub is {colour}",
            f"a network of {count_word(n)} nodes {cycle}; the {colour} node has the most links",
        ]
        return caption, paraphrases

    def questions(self, attrs: dict[str, Any], rng: np.random.Generator) -> list[QA]:
        return [
            QA("nodes", "How many nodes are there?", str(len(attrs["colours"]))),
            QA("edges", "How many edges are there?", str(len(attrs["edges"]))),
            QA("cycle", "Is there a cycle?", "yes" if has_cycle(attrs) else "no"),
            QA("hub", "What color is the most connected node?", attrs["colours"][hub(attrs)]),
            QA("hub_degree", "How many neighbors does the most connected node have?", str(max(degrees(attrs)))),
        ]
