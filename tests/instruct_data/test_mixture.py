"""Weighted mixtures: deterministic shuffles, weights, balanced replay, resumable position, sharding."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from onellm.instruct_data.mixture import Mixture, Source, select, shard, with_replay


def take(mixture: Mixture, batch: int, count: int, start: int = 0):
    return list(itertools.islice(mixture.batches(batch, start=start), count))


def test_same_seed_same_stream_other_seed_other_stream():
    sources = [Source("a", list(range(50))), Source("b", list(range(50, 80)))]
    assert take(Mixture(sources, seed=1), 4, 20) == take(Mixture(sources, seed=1), 4, 20)
    assert take(Mixture(sources, seed=1), 4, 20) != take(Mixture(sources, seed=2), 4, 20)


def test_every_epoch_of_a_source_is_a_permutation():
    mixture = Mixture([Source("only", list(range(10, 40)))], seed=0)
    drawn = [i for _, batch in take(mixture, 5, 12) for i in batch]  # 60 draws = two epochs of 30
    assert sorted(drawn[:30]) == list(range(10, 40)) and sorted(drawn[30:]) == list(range(10, 40))
    assert drawn[:30] != drawn[30:]  # a fresh shuffle per epoch


def test_per_source_batches_hold_one_source_and_follow_the_weights():
    sources = [Source("a", list(range(100)), weight=3.0), Source("b", list(range(100, 200)), weight=1.0)]
    batches = take(Mixture(sources, seed=0, batching="per_source"), 4, 2000)
    for name, batch in batches:
        assert all((i < 100) == (name == "a") for i in batch)
    share = Counter(name for name, _ in batches)["a"] / len(batches)
    assert abs(share - 0.75) < 0.04


def test_mixed_batches_combine_sources():
    sources = [Source("a", list(range(100))), Source("b", list(range(100, 200)))]
    batches = take(Mixture(sources, seed=0, batching="mixed"), 16, 50)
    assert all(name == "mixed" for name, _ in batches)
    assert sum(1 for _, b in batches if min(b) < 100 <= max(b)) > 40


def test_replay_is_balanced_whatever_the_source_sizes():
    main = [Source("depth", list(range(10)), 1.0), Source("imu", list(range(10, 20)), 3.0)]
    replay = [Source("image", list(range(100, 1000))), Source("audio", list(range(1000, 1005)))]
    mixed = {s.name: s.weight for s in with_replay(main, replay, 0.2)}
    assert mixed["replay:image"] == pytest.approx(0.1) and mixed["replay:audio"] == pytest.approx(0.1)
    assert mixed["depth"] == pytest.approx(0.2) and mixed["imu"] == pytest.approx(0.6)
    assert with_replay(main, replay, 0.0) == main


def test_resuming_at_step_k_continues_the_same_stream():
    sources = [Source("a", list(range(7))), Source("b", list(range(7, 20)), 2.0)]
    mixture = Mixture(sources, seed=3)
    full = take(mixture, 3, 30)
    assert take(mixture, 3, 10, start=20) == full[20:30]


def test_two_processes_see_what_one_process_with_a_double_batch_sees():
    batch = list(range(16))
    one = shard(batch, rank=0, world_size=1, micro_steps=1)
    two = [shard(batch, rank=r, world_size=2, micro_steps=1) for r in range(2)]
    assert two[0][0] + two[1][0] == one[0]
    accum = shard(batch, rank=0, world_size=1, micro_steps=2)
    assert accum[0] + accum[1] == one[0]
    with pytest.raises(ValueError, match="does not split"):
        shard(list(range(10)), rank=0, world_size=4, micro_steps=1)


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match="empty"):
        Source("nothing", [])
    with pytest.raises(ValueError, match="weight"):
        Source("a", [1], weight=0.0)
    with pytest.raises(ValueError, match="fraction"):
        with_replay([Source("a", [1])], [Source("b", [2])], 1.0)
    with pytest.raises(ValueError, match="unique"):
        Mixture([Source("a", [1]), Source("a", [2])])
    assert select(6, lambda i: i % 2 == 0) == [0, 2, 4]


def padded(batches, lengths) -> int:
    """Tokens of the padded batches (each row padded to its batch's longest)."""
    return sum(max(lengths[i] for i in batch) * len(batch) for _, batch in batches)


@pytest.mark.parametrize("batching", ["per_source", "mixed"])
def test_grouping_by_length_pads_less_and_serves_the_same_draws(batching):
    rng = random.Random(0)
    lengths = [rng.choice([20, 21, 22, 40, 60]) for _ in range(120)]
    sources = [Source("a", list(range(80))), Source("b", list(range(80, 120)), 0.5)]
    plain = take(Mixture(sources, seed=4, batching=batching), 8, 40)
    grouped = take(Mixture(sources, 4, batching, lengths, group_by_length=10), 8, 40)
    assert padded(grouped, lengths) < 0.8 * padded(plain, lengths)
    if batching == "per_source":  # a batch still holds one source
        assert all({i < 80 for i in batch} == {name == "a"} for name, batch in grouped)
    else:  # a group of 10 batches holds exactly the records of the 10 plain batches it replaces
        assert Counter(i for _, b in grouped[:10] for i in b) == Counter(i for _, b in plain[:10] for i in b)
    # deterministic and resumable like the plain stream
    again = Mixture(sources, 4, batching, lengths, group_by_length=10)
    assert take(again, 8, 15, start=25) == grouped[25:40]


def test_grouping_by_length_reads_each_source_in_its_shuffled_epochs():
    lengths = [i % 7 for i in range(60)]
    one = [Source("only", list(range(60)))]
    plain = take(Mixture(one, seed=2), 6, 20)  # 120 draws = two epochs
    grouped = take(Mixture(one, 2, "per_source", lengths, group_by_length=5), 6, 20)
    assert Counter(i for _, b in grouped for i in b) == Counter(i for _, b in plain for i in b)

    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for _, b in batches)

    assert spread(grouped) < 0.5 * spread(plain)


def test_grouping_by_length_needs_the_lengths():
    with pytest.raises(ValueError, match="lengths"):
        Mixture([Source("a", [1, 2])], group_by_length=4)
