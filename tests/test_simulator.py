"""The simulator: rates near target, the funnel's logic, determinism, time order."""

import numpy as np
import pytest

from components.devtools.simulator import (
    COMMON_FILE,
    CSV_FILE,
    GROUND_TRUTH_FILE,
    SKELETON_FILE,
    SimulationSpec,
    build_world,
    draw_impressions,
    simulate,
)
from esmm_model.config import load_config

SMALL = dict(users=2_000, items=4_000, categories=50, brands=200, shops=300)


def draw(rows: int, preset: str = "default", seed: int = 3):
    spec = SimulationSpec.preset(preset, rows=rows, seed=seed, **SMALL)
    rng = np.random.default_rng(spec.seed)
    return spec, draw_impressions(spec, build_world(spec, rng), rng)


@pytest.mark.parametrize("preset, ctr, cvr", [("default", 0.04, 0.05), ("aliccp", 0.04, 0.005)])
def test_rates_near_target(preset, ctr, cvr):
    spec, imp = draw(200_000, preset)
    assert imp.p_click.mean() == pytest.approx(ctr, rel=1e-3)  # calibrated exactly on the drawn impressions
    assert np.average(imp.p_cvr, weights=imp.p_click) == pytest.approx(cvr, rel=1e-3)
    assert imp.click.mean() == pytest.approx(ctr, rel=0.05)
    assert imp.conversion.sum() / imp.click.sum() == pytest.approx(cvr, rel=0.25 if preset == "aliccp" else 0.1)


def test_funnel_and_selection_bias():
    _, imp = draw(200_000)
    assert np.array_equal(imp.conversion, imp.click & imp.would_convert)
    # Clicks and purchase intent share structure but are not the same thing: the true
    # p_cvr of clicked impressions differs from its entire-space mean (selection bias).
    assert 0.0 < np.corrcoef(imp.p_click, imp.p_cvr)[0, 1] < 0.9
    assert np.average(imp.p_cvr, weights=imp.click) != pytest.approx(imp.p_cvr.mean(), rel=0.05)


def test_deterministic_per_seed():
    _, a = draw(5_000, seed=11)
    _, b = draw(5_000, seed=11)
    _, c = draw(5_000, seed=12)
    assert np.array_equal(a.p_click, b.p_click) and np.array_equal(a.click, b.click)
    assert not np.array_equal(a.item, c.item)


def test_writes_aliccp_raw_csv_and_ground_truth(tmp_path):
    config = load_config("simulator")
    spec = SimulationSpec.preset("default", rows=3_000, seed=5, **SMALL)
    summary = simulate(spec, config, tmp_path, write_csv=True)
    skeleton = (tmp_path / SKELETON_FILE).read_text().splitlines()
    assert len(skeleton) == 3_000
    first = skeleton[0].split(",")
    assert len(first) == 6 and first[0] == "1"
    assert int(first[4]) == len(first[5].split("\x01"))
    assert all(entry.count("\x02") == 1 and entry.count("\x03") == 1 for entry in first[5].split("\x01"))
    sample_ids = [int(line.split(",", 1)[0]) for line in skeleton]
    assert sample_ids == sorted(sample_ids)  # rows in time order
    common_indices = {line.split(",", 1)[0] for line in (tmp_path / COMMON_FILE).read_text().splitlines()}
    assert {line.split(",")[3] for line in skeleton} <= common_indices
    truth = np.genfromtxt(tmp_path / GROUND_TRUTH_FILE, delimiter=",", names=True)
    assert len(truth) == 3_000
    clicks = np.array([int(line.split(",")[1]) for line in skeleton])
    conversions = np.array([int(line.split(",")[2]) for line in skeleton])
    assert np.array_equal(conversions, clicks & truth["would_convert"].astype(int))
    assert summary.clicks == clicks.sum() and summary.conversions == conversions.sum()
    header = (tmp_path / CSV_FILE).read_text().splitlines()[0].split(",")
    assert header == ["sample_id", "click", "conversion", *(f.name for f in config.features)]
