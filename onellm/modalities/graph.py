"""Graph: nodes with features + undirected edges: a JSON object ``{"nodes": [[features], ...], "edges": [[i, j], ...]}``
(``"nodes"`` may also be a count, for a graph without features), a JSON list of pairs or a text edge list (``i j`` per
line, ``#`` comments; nodes 0..max index, no features), a dict in memory, or an array ``[E, 2]`` of edges -> one
token per node.

The preprocessed input is ``[max_nodes, 1 + num_features + max_nodes]``, row n = node n (rows past the node count are
zeros): present (1/0), the node's features (``signed_log``, zero-padded to ``num_features``) and its adjacency row
(symmetric 0/1, no self loops).

Tokenizer (trainable; permutation-equivariant, no position table: node ids carry no meaning):

    h0 = Linear(features) + Embedding(degree) + Linear(random-walk return probabilities, steps 1..walk_steps)
    h  = h + GELU(Linear(A_hat @ LayerNorm(h)))        x gcn_steps   (A_hat = D^-1/2 (A + I) D^-1/2, Kipf & Welling)

The random-walk encoding (diagonal of P^k, P = D^-1 A; Dwivedi et al. 2022) tells a node how it sits in the structure:
a return at an odd step k means the node lies on a cycle of odd length <= k, and the degree embedding names hubs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import EXTENDED_SET, TOO_LONG, WRONG_SHAPE, Modality, Source, signed_log


class GraphTokenizer(nn.Module):
    """``[B, N, 1 + F + N]`` -> ``[B, N, C]``: one token per node slot (a learned pad vector where there is none)."""

    def __init__(self, width: int, max_nodes: int, num_features: int, gcn_steps: int, walk_steps: int):
        super().__init__()
        self.num_features, self.walk_steps = num_features, walk_steps
        self.features = nn.Linear(num_features, width)
        self.degree = nn.Embedding(max_nodes, width)
        self.walks = nn.Linear(walk_steps, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(gcn_steps))
        self.steps = nn.ModuleList(nn.Linear(width, width) for _ in range(gcn_steps))
        self.pad = nn.Parameter(torch.zeros(width))

    def forward(self, graph: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        dtype = self.pad.dtype
        present = graph[..., 0].float() > 0.5  # [B, N]
        both = present[:, :, None] & present[:, None, :]
        adjacency = (graph[..., 1 + self.num_features :].float() > 0.5) & both  # [B, N, N], 0/1 survives any dtype
        adjacency = adjacency.float()
        degree = adjacency.sum(-1)  # [B, N]
        # Random-walk return probabilities diag(P^k), k = 1..walk_steps (isolated nodes: 0).
        walk = adjacency / degree.clamp(min=1).unsqueeze(-1)
        power, returns = walk, []
        for _ in range(self.walk_steps):
            returns.append(torch.diagonal(power, dim1=-2, dim2=-1))
            power = power @ walk
        looped = adjacency + torch.diag_embed(present.float())
        scale = looped.sum(-1).clamp(min=1).rsqrt()
        a_hat = (scale.unsqueeze(-1) * looped * scale.unsqueeze(-2)).to(dtype)  # D^-1/2 (A + I) D^-1/2
        max_degree = self.degree.num_embeddings - 1
        hidden = (
            self.features(graph[..., 1 : 1 + self.num_features].to(dtype))
            + self.degree(degree.long().clamp(max=max_degree))
            + self.walks(torch.stack(returns, dim=-1).to(dtype))
        )
        for norm, step in zip(self.norms, self.steps, strict=True):
            hidden = hidden + nn.functional.gelu(step(a_hat @ norm(hidden)))
        return torch.where(present[..., None], hidden, self.pad)


@register_modality
class GraphModality(Modality):
    name = "graph"
    group = EXTENDED_SET
    order = 13
    noun = "graph"
    suffixes = (".json", ".edgelist")
    # max_nodes tokens per graph; node features are zero-padded to num_features (more is an error).
    defaults = {"max_nodes": 128, "num_features": 32, "gcn_steps": 2, "walk_steps": 8}
    # tiny: 16 nodes; small: 16 nodes, one per projector query; 7b: 128 nodes of up to 32 features.
    preset_options = {
        "tiny": {"max_nodes": 16, "num_features": 8},
        "small": {"max_nodes": 16, "num_features": 8},
        "7b": {"max_nodes": 128, "num_features": 32},
    }

    def file_match(self, path: Path) -> int:
        """An edge list file, or a JSON object with ``edges`` (or a JSON list of pairs)."""
        if path.suffix.lower() == ".edgelist":
            return 3
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, ValueError):
            return 0
        if isinstance(data, dict):
            return 4 if "edges" in data else 0
        pairs = isinstance(data, list) and data and all(isinstance(e, list) and len(e) == 2 for e in data)
        return 2 if pairs else 0

    def encode_array(self, array: Any, extras: dict | None = None) -> tuple[bytes, str]:
        """A graph (a dict with nodes/edges, or an edge array ``[E, 2]``) as JSON."""
        graph = array if isinstance(array, dict) else {"edges": np.asarray(array).astype(int).tolist()}
        return json.dumps(graph).encode("utf-8"), "json"

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        opts = self.options(**options)
        return (opts["max_nodes"], 1 + opts["num_features"] + opts["max_nodes"])

    def load_graph(self, source: Source | dict) -> tuple[Any, Any]:
        """``(nodes, edges)`` as given: nodes a list of feature lists, a count, or None (from the edges)."""
        if isinstance(source, dict):
            data: Any = source
        elif isinstance(source, (np.ndarray, torch.Tensor)):
            data = {"edges": self.load_array(source).tolist()}
        else:
            raw = self.read_bytes(source)
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise self.fail(source, "not a readable graph (not UTF-8 text)") from None
            try:
                data = json.loads(text)
            except ValueError as exc:
                if isinstance(source, (str, Path)) and str(source).lower().endswith(".json"):
                    raise self.fail(source, f"not a readable JSON graph ({exc})") from None
                data = {"edges": self._edge_lines(source, text)}
        if isinstance(data, list):
            data = {"edges": data}
        if not isinstance(data, dict) or "edges" not in data:
            raise self.fail(
                source, 'expected {"nodes": [[features], ...], "edges": [[i, j], ...]} or a list of edges', WRONG_SHAPE
            )
        unknown = sorted(set(data) - {"nodes", "edges"})
        if unknown:
            raise self.fail(source, f"unknown key(s) {unknown}; a graph has 'nodes' and 'edges'", WRONG_SHAPE)
        return data.get("nodes"), data["edges"]

    def _edge_lines(self, source: Source, text: str) -> list[list[str]]:
        edges = []
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split("#", 1)[0].replace(",", " ").split()
            if not words:
                continue
            if len(words) < 2:
                raise self.fail(source, f"edge list line {number}: expected 'i j', found {line.strip()!r}", WRONG_SHAPE)
            edges.append(words[:2])  # further words (weights, attributes) are not read
        return edges

    def preprocess(self, source: Source | dict, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        nodes, edges = self.load_graph(source)
        pairs = self._edges(source, edges)
        features = self._features(source, nodes, pairs, opts["num_features"])
        count = features.shape[0]
        if count > opts["max_nodes"]:
            raise self.fail(source, f"{count} nodes exceeds the {opts['max_nodes']}-node limit", TOO_LONG)
        if pairs.size and pairs.max() >= count:
            raise self.fail(
                source,
                f"edge to node {int(pairs.max())}, but the graph has {count} nodes (0..{count - 1})",
                WRONG_SHAPE,
            )
        out = np.zeros(self.input_shape(**opts), np.float32)
        out[:count, 0] = 1.0
        out[:count, 1 : 1 + features.shape[1]] = signed_log(features)
        adjacency = out[:, 1 + opts["num_features"] :]
        adjacency[pairs[:, 0], pairs[:, 1]] = 1.0
        adjacency[pairs[:, 1], pairs[:, 0]] = 1.0
        np.fill_diagonal(adjacency, 0.0)  # self loops carry nothing; the tokenizer adds its own
        return torch.from_numpy(out)

    def _edges(self, source: Source, edges: Any) -> np.ndarray:
        """``[E, 2]`` int64 node ids, checked: pairs of integers >= 0."""
        bad = "edges must be a list of pairs of node numbers [[i, j], ...]"
        if not isinstance(edges, (list, tuple)):
            raise self.fail(source, f"{bad}, found {type(edges).__name__}", WRONG_SHAPE)
        if any(not isinstance(edge, (list, tuple)) or len(edge) != 2 for edge in edges):
            raise self.fail(source, bad, WRONG_SHAPE)
        try:
            pairs = np.asarray(edges, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise self.fail(source, bad, WRONG_SHAPE) from None
        self.check_finite(source, pairs)
        if (pairs < 0).any() or (pairs != np.round(pairs)).any():
            raise self.fail(source, "edge endpoints must be node numbers 0, 1, 2, ...", WRONG_SHAPE)
        return pairs.astype(np.int64)

    def _features(self, source: Source, nodes: Any, pairs: np.ndarray, num_features: int) -> np.ndarray:
        """``[N, F]`` node features (``F = 0`` without features)."""
        if nodes is None:
            count = int(pairs.max()) + 1 if pairs.size else 0
            features = np.zeros((count, 0))
        elif isinstance(nodes, int) and not isinstance(nodes, bool):
            features = np.zeros((max(nodes, 0), 0))
        elif isinstance(nodes, list):
            rows = [node if isinstance(node, list) else [node] for node in nodes]
            widths = {len(row) for row in rows}
            if len(widths) > 1:
                raise self.fail(source, f"nodes have different feature counts {sorted(widths)}", WRONG_SHAPE)
            try:
                features = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
            except (TypeError, ValueError):
                raise self.fail(source, "node features must be numbers", WRONG_SHAPE) from None
        else:
            raise self.fail(
                source, f"'nodes' must be a list of feature lists or a count, found {type(nodes).__name__}", WRONG_SHAPE
            )
        if features.shape[0] < 1:
            raise self.fail(source, "the graph has no node", WRONG_SHAPE)
        if features.shape[1] > num_features:
            raise self.fail(
                source, f"nodes have {features.shape[1]} features; this model reads at most {num_features}", WRONG_SHAPE
            )
        self.check_finite(source, features)
        return features

    def dummy_input(self, **options: Any) -> torch.Tensor:
        """A ring of four nodes with one-hot features."""
        opts = self.options(**options)
        count = min(4, opts["max_nodes"])
        nodes = np.eye(count, min(count, opts["num_features"])).tolist()
        return self.preprocess({"nodes": nodes, "edges": [[i, (i + 1) % count] for i in range(count)]}, **opts)

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        return GraphTokenizer(width, opts["max_nodes"], opts["num_features"], opts["gcn_steps"], opts["walk_steps"])
