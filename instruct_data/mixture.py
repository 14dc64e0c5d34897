"""Weighted mixtures of data sources with a deterministic shuffle, and balanced replay of earlier modalities.

A *source* is a list of dataset indices with a weight (e.g. "the image caption records of train.jsonl").
:class:`Mixture` turns sources into a stream of global batches that is a pure function of the seed:

- each source is read in epochs, each epoch a fresh permutation seeded by ``(seed, source name, epoch)``;
- ``batching="per_source"``: every batch is drawn from one source, chosen with probability proportional to its
  weight (sources are per modality in the shipped configs, so a batch holds one modality);
  ``batching="mixed"``: every sample picks its source independently.

With ``lengths`` (token count per dataset index) and ``group_by_length = G > 1``, the indices of ``G`` batches are
drawn at once (from one source under ``per_source``), sorted by length and cut into ``G`` batches again, which are
served in a seeded random order: a batch holds records of similar length, so padding to its longest row wastes
little compute (HF Trainer's ``group_by_length``), while each group keeps the mixture's proportions.

Batch ``k`` is the same on every process and after a restart: resuming at step ``k`` replays the choices of the
first ``k`` batches (integers only, no data is loaded), which restores the data position exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

BATCHING = ("per_source", "mixed")


@dataclass
class Source:
    """``indices`` into a dataset, drawn with relative probability ``weight``."""

    name: str
    indices: list[int]
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.indices:
            raise ValueError(f"data source {self.name!r} is empty (no record matched its filter)")
        if not self.weight > 0:
            raise ValueError(f"data source {self.name!r}: weight must be > 0, got {self.weight}")


def select(count: int, keep: Callable[[int], bool]) -> list[int]:
    """Indices ``i < count`` for which ``keep(i)`` holds (a source filter over a dataset)."""
    return [index for index in range(count) if keep(index)]


def with_replay(sources: Sequence[Source], replay: Sequence[Source], fraction: float) -> list[Source]:
    """Main sources keep their relative weights and share ``1 - fraction`` of the draws; the replay sources share
    ``fraction`` equally (balanced: each earlier modality is replayed as often as the others, whatever its size).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
    if not sources:
        raise ValueError("a mixture needs at least one (non-replay) source")
    if not replay or fraction == 0.0:
        return list(sources)
    total = sum(source.weight for source in sources)
    main = [Source(s.name, s.indices, (1.0 - fraction) * s.weight / total) for s in sources]
    return main + [Source(f"replay:{s.name}", s.indices, fraction / len(replay)) for s in replay]


def _rng(seed: int, *names: str | int) -> np.random.Generator:
    parts = [seed] + [n if isinstance(n, int) else zlib.crc32(n.encode()) for n in names]
    return np.random.default_rng(parts)


class _Stream:
    """Endless shuffled reading of one source: epoch after epoch, each a new seeded permutation."""

    def __init__(self, source: Source, seed: int):
        self.source, self.seed = source, seed
        self.epoch, self.position = 0, 0
        self.order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return _rng(self.seed, self.source.name, self.epoch).permutation(len(self.source.indices))

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position == len(self.order):
                self.epoch, self.position = self.epoch + 1, 0
                self.order = self._permutation()
            step = min(count - len(out), len(self.order) - self.position)
            out.extend(self.source.indices[i] for i in self.order[self.position : self.position + step])
            self.position += step
        return out


class _LengthGroups:
    """Batches of similar length from ``draw(n)`` (n indices in the source's order): ``group`` batches drawn at
    once, sorted by length (stable: equal lengths keep the shuffled order), cut again, served in a seeded order."""

    def __init__(self, draw: Callable[[int], list[int]], lengths: Sequence[int], group: int, rng: np.random.Generator):
        self.draw, self.lengths, self.group, self.rng = draw, lengths, group, rng
        self.ready: list[list[int]] = []

    def take(self, batch_size: int) -> list[int]:
        if not self.ready:
            pool = sorted(self.draw(batch_size * self.group), key=self.lengths.__getitem__)
            cut = [pool[k * batch_size : (k + 1) * batch_size] for k in range(self.group)]
            self.ready = [cut[int(k)] for k in self.rng.permutation(self.group)]
        return self.ready.pop()


class Mixture:
    """Deterministic stream of global batches (lists of dataset indices) over weighted sources."""

    def __init__(
        self,
        sources: Sequence[Source],
        seed: int = 0,
        batching: str = "per_source",
        lengths: Sequence[int] | None = None,
        group_by_length: int = 0,
    ):
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        if not sources:
            raise ValueError("a mixture needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data source names must be unique, got {names}")
        if group_by_length > 1 and lengths is None:
            raise ValueError("group_by_length needs the records' token lengths")
        self.sources = list(sources)
        self.seed = seed
        self.batching = batching
        self.lengths, self.group = lengths, group_by_length
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.probabilities = weights / weights.sum()

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[str, list[int]]]:
        """``(source name, indices)`` for global batches ``start, start+1, ...`` (endless).

        The name is the source of a ``per_source`` batch, or ``"mixed"``.
        """
        streams = [_Stream(source, self.seed) for source in self.sources]
        choices = _rng(self.seed, "mixture", self.batching)

        def mixed(count: int) -> list[int]:
            picks = choices.choice(len(streams), size=count, p=self.probabilities)
            return [streams[int(p)].take(1)[0] for p in picks]

        if self.group > 1:  # the same draws, regrouped by length (per source, or over the mixed stream)
            grouped = [self._grouped(s.take, s.source.name) for s in streams]
            together = self._grouped(mixed, "mixed")
        step = 0
        while True:
            if self.batching == "per_source":
                picked = int(choices.choice(len(streams), p=self.probabilities))
                take = grouped[picked].take if self.group > 1 else streams[picked].take
                name, indices = self.sources[picked].name, take(batch_size)
            else:
                name, indices = "mixed", together.take(batch_size) if self.group > 1 else mixed(batch_size)
            if step >= start:
                yield name, indices
            step += 1

    def _grouped(self, draw: Callable[[int], list[int]], name: str) -> _LengthGroups:
        return _LengthGroups(draw, self.lengths, self.group, _rng(self.seed, "length groups", name))

    def describe(self) -> str:
        return ", ".join(
            f"{s.name} ({len(s.indices)} records, p={p:.2f})"
            for s, p in zip(self.sources, self.probabilities, strict=True)
        )


def shard(batch: Sequence[int], rank: int, world_size: int, micro_steps: int) -> list[list[int]]:
    """This process's micro-batches of one global batch.

    A global batch of ``world_size * micro_steps * b`` indices is cut into ``b``-sized slices; micro step ``j`` of
    process ``r`` takes slice ``j * world_size + r``. So 2 processes x batch b and 1 process x batch 2b see the same
    samples in the same optimizer step.
    """
    slices = world_size * micro_steps
    if len(batch) % slices:
        raise ValueError(f"global batch of {len(batch)} does not split into {world_size} process(es) x {micro_steps}")
    size = len(batch) // slices
    return [
        list(batch[(j * world_size + rank) * size : (j * world_size + rank + 1) * size]) for j in range(micro_steps)
    ]


__all__ = ["BATCHING", "Mixture", "Source", "select", "shard", "with_replay"]
