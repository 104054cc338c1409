"""The time split: ordering keys -> the key at input.train_fraction, through the C++ quantiles sketch."""
import numpy as np
import pytest

from components.ingest.graph import QUANTILE_EPSILON, QUANTILES, KeyQuantiles, _split_point


def split_of(batches: list[np.ndarray], fraction: float, workers: int = 2) -> float | None:
    """Combines as a runner does: each worker adds its batches and compacts, then the accumulators merge."""
    fn = KeyQuantiles()
    accumulators = []
    for w in range(workers):
        acc = fn.create_accumulator()
        for keys in batches[w::workers]:
            acc = fn.add_input(acc, keys)
        accumulators.append(fn.compact(acc))
    return _split_point(fn.extract_output(fn.merge_accumulators(accumulators)), fraction)


@pytest.mark.parametrize("n,fraction", [(40, 0.5), (41, 0.5), (7, 0.3), (1000, 0.8), (2500, 0.25), (9999, 0.7)])
def test_small_logs_split_exactly_at_the_fraction(n, fraction):
    keys = np.random.default_rng(n).permutation(n).astype(np.float64) * 3 + 1e9
    threshold = split_of(np.array_split(keys, 5), fraction)
    assert (keys <= threshold).sum() == max(1, int(np.floor(fraction * n)))


def test_repeated_keys_stay_on_one_side_and_no_key_means_no_split():
    keys = np.repeat(np.arange(10, dtype=np.float64), 10)  # 10 rows per key
    assert (keys <= split_of([keys[:55], keys[55:]], 0.55)).sum() == 50
    assert split_of([np.full(4, 7.0)], 0.5) == 7.0  # every row trains; ingest then fails on the empty eval split
    assert split_of([], 0.5) is None


def test_a_million_keys_split_within_the_sketch_error():
    rng = np.random.default_rng(3)
    keys = rng.permutation(1_000_000).astype(np.float64)
    threshold = split_of(np.array_split(keys, 488), 0.8)
    assert abs((keys <= threshold).mean() - 0.8) <= QUANTILE_EPSILON + 1 / (QUANTILES - 1)
