"""The simulator: rates near target, the funnel's logic, determinism, time order, the raw format,
and each story's structure, measured in what it writes (labels and the ground-truth sidecar)."""

import dataclasses

import numpy as np
import pytest

from components.devtools.simulator import (
    COMMON_FILE,
    CSV_FILE,
    GROUND_TRUTH_FILE,
    LOGITS,
    SKELETON_FILE,
    STORIES,
    SimulationSpec,
    Terms,
    build_world,
    draw_impressions,
    simulate,
)
from components.ingest.aliccp_reader import AliccpReader
from esmm_model.config import load_config
from esmm_model.errors import EsmmError
from pipelines.cli import build_parser

SMALL = dict(users=2_000, items=4_000, categories=50, brands=200, shops=300)


def draw(rows: int | None = None, preset: str = "baseline", seed: int = 3, **overrides):
    spec = SimulationSpec.for_preset(preset, "small", rows=rows, seed=seed, **overrides)
    rng = np.random.default_rng(spec.seed)
    world = build_world(spec, rng)
    return spec, world, draw_impressions(spec, world, rng)


@pytest.mark.parametrize("cvr", [0.05, 0.005])
def test_rates_near_target(cvr):
    _, _, imp = draw(200_000, cvr=cvr, **SMALL)
    assert imp.p_click.mean() == pytest.approx(0.04, rel=1e-3)  # calibrated exactly on the drawn impressions
    assert np.average(imp.p_cvr, weights=imp.p_click) == pytest.approx(cvr, rel=1e-3)
    assert imp.click.mean() == pytest.approx(0.04, rel=0.05)
    assert imp.conversion.sum() / imp.click.sum() == pytest.approx(cvr, rel=0.25 if cvr < 0.01 else 0.1)


@pytest.mark.parametrize("preset", list(STORIES))
def test_every_story_is_calibrated_and_draws_from_its_probabilities(preset):
    _, _, imp = draw(100_000, preset)
    assert imp.p_click.mean() == pytest.approx(0.04, rel=1e-3)
    assert np.average(imp.p_cvr, weights=imp.p_click) == pytest.approx(0.05, rel=1e-3)
    # Clicks and conversions are Bernoulli draws of the true probabilities: within 4 standard deviations.
    assert abs(imp.click.sum() - imp.p_click.sum()) < 4 * np.sqrt((imp.p_click * (1 - imp.p_click)).sum())
    p = imp.p_cvr[imp.click]
    assert abs(imp.conversion.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())


def test_funnel_and_selection_bias():
    _, _, imp = draw(200_000, **SMALL)
    assert np.array_equal(imp.conversion, imp.click & imp.would_convert)
    # Clicks and purchase intent share structure but are not the same thing: the true
    # p_cvr of clicked impressions differs from its entire-space mean (selection bias).
    assert 0.0 < np.corrcoef(imp.p_click, imp.p_cvr)[0, 1] < 0.9
    assert np.average(imp.p_cvr, weights=imp.click) != pytest.approx(imp.p_cvr.mean(), rel=0.05)


@pytest.mark.parametrize("preset", list(STORIES))
def test_deterministic_per_seed(preset):
    _, _, a = draw(5_000, preset, seed=11)
    _, _, b = draw(5_000, preset, seed=11)
    _, _, c = draw(5_000, preset, seed=12)
    assert np.array_equal(a.p_click, b.p_click) and np.array_equal(a.click, b.click)
    assert not np.array_equal(a.item, c.item)


def test_unknown_preset_or_size_is_named():
    with pytest.raises(EsmmError, match="'viral'.*baseline, clickbait, long_tail, position"):
        SimulationSpec.for_preset("viral")
    with pytest.raises(EsmmError, match="'huge'"):
        SimulationSpec.for_preset("baseline", "huge")
    with pytest.raises(EsmmError, match="'viral'"):
        SimulationSpec(preset="viral")


def test_sizes_small_and_1m():
    for preset in STORIES:
        assert SimulationSpec.for_preset(preset, "small").rows == 20_000
        assert SimulationSpec.for_preset(preset, "1m").rows == 1_000_000
    # the baseline's 1m world is the one the benchmarks always used, at 1M rows
    assert dataclasses.replace(SimulationSpec.for_preset("baseline"), rows=200_000) == SimulationSpec()


def test_cli_passes_story_size_and_rates():
    args = build_parser().parse_args(["simulate", "--out", "x", "--preset", "long_tail", "--size", "small",
                                      "--cvr", "0.005"])
    spec = SimulationSpec.for_preset(args.preset, args.size, rows=args.rows, users=args.users, items=args.items,
                                     ctr=args.ctr, cvr=args.cvr, seed=args.seed)
    assert (spec.preset, spec.rows, spec.users, spec.cvr, spec.ctr) == ("long_tail", 20_000, 8_000, 0.005, 0.04)


@pytest.mark.parametrize("preset", list(STORIES))
def test_writes_aliccp_raw_csv_and_ground_truth(tmp_path, preset):
    config = load_config("simulator")
    spec = SimulationSpec.for_preset(preset, "small", rows=3_000, seed=5)
    summary = simulate(spec, config, tmp_path, write_csv=True)
    skeleton = (tmp_path / SKELETON_FILE).read_text().splitlines()
    assert len(skeleton) == 3_000
    first = skeleton[0].split(",")
    assert len(first) == 6 and first[0] == "1"
    assert int(first[4]) == len(first[5].split("\x01"))
    assert all(entry.count("\x02") == 1 and entry.count("\x03") == 1 for entry in first[5].split("\x01"))
    sample_ids = [int(line.split(",", 1)[0]) for line in skeleton]
    assert sample_ids == sorted(sample_ids)  # rows in time order
    common = (tmp_path / COMMON_FILE).read_text().splitlines()
    assert {line.split(",")[3] for line in skeleton} <= {line.split(",", 1)[0] for line in common}
    truth = np.genfromtxt(tmp_path / GROUND_TRUTH_FILE, delimiter=",", names=True)
    assert len(truth) == 3_000
    clicks = np.array([int(line.split(",")[1]) for line in skeleton])
    conversions = np.array([int(line.split(",")[2]) for line in skeleton])
    assert np.array_equal(conversions, clicks & truth["would_convert"].astype(int))
    assert summary.clicks == clicks.sum() and summary.conversions == conversions.sum()
    assert summary.preset == preset
    header = (tmp_path / CSV_FILE).read_text().splitlines()[0].split(",")
    assert header == ["sample_id", "click", "conversion", *(f.name for f in config.features)]

    # The real Ali-CCP fields: 210 repeats within a sample, the crosses carry weights other than 1.
    def entries(line):
        return [e.split("\x02")[0:1] + e.split("\x02")[1].split("\x03") for e in line.split(",")[-1].split("\x01")]

    per_row = [entries(line) for line in skeleton]
    assert max(sum(field == "210" for field, _, _ in row) for row in per_row) > 1
    for cross in ("508", "509", "702", "853"):
        weights = [float(value) for row in per_row for field, _, value in row if field == cross]
        assert weights and max(weights) > 1, cross
    assert max(sum(field == "853" for field, _, _ in row) for row in per_row) > 1
    user_fields = {field for line in common for field, _, _ in entries(line)}
    assert {"101", "121", "122", "124", "125", "126", "127", "128", "129",
            "109_14", "110_14", "127_14", "150_14"} <= user_fields
    # Both shipped Ali-CCP-format configs read every line.
    for name in ("simulator", "aliccp"):
        reader = AliccpReader(load_config(name))
        shared = dict(reader.parse_common(line) for line in common)
        rows = [reader.parse(line, shared) for line in skeleton]
        assert [row.click for row in rows] == clicks.tolist()


def _item_log_correlation(imp, min_impressions: int) -> float:
    """Across items, the correlation of log mean p_click with log mean p_cvr (the sidecar's columns)."""
    shown = np.bincount(imp.item)
    kept = shown >= min_impressions
    p_click = np.bincount(imp.item, weights=imp.p_click)[kept] / shown[kept]
    p_cvr = np.bincount(imp.item, weights=imp.p_cvr)[kept] / shown[kept]
    return float(np.corrcoef(np.log(p_click), np.log(p_cvr))[0, 1])


@pytest.mark.parametrize("seed", [3, 4])
def test_clickbait_items_that_draw_clicks_convert_worse(seed):
    _, _, clickbait = draw(preset="clickbait", seed=seed)
    _, _, baseline = draw(preset="baseline", seed=seed)
    assert _item_log_correlation(clickbait, 20) < -0.45
    assert _item_log_correlation(clickbait, 20) < _item_log_correlation(baseline, 20) - 0.15


def test_clickbait_thrifty_users_click_more_and_buy_less():
    _, world, imp = draw(preset="clickbait")
    thrifty = world.user_thrifty[imp.user]
    assert 0.15 < thrifty.mean() < 0.4
    assert imp.click[thrifty].mean() > 1.3 * imp.click[~thrifty].mean()
    cvr_on_clicks = [np.average(imp.p_cvr, weights=imp.click & side) for side in (thrifty, ~thrifty)]
    assert cvr_on_clicks[0] < 0.6 * cvr_on_clicks[1]
    _, world, _ = draw(preset="baseline")
    assert not world.user_thrifty.any()


POSITION = np.minimum(np.random.default_rng(1).geometric(0.15, size=2_000), 30)


def _logits_with(preset: str, **changes):
    """The story's logits on random terms, and on the same terms with ``changes``."""
    rng = np.random.default_rng(0)
    n = len(POSITION)
    base = Terms(
        shared=rng.normal(size=n), purchase=rng.normal(size=n), appeal=rng.normal(size=n),
        quality=rng.normal(size=n), brand_quality=rng.normal(size=n), shop_quality=rng.normal(size=n),
        thrifty=(rng.random(n) < 0.3).astype(float), in_history=rng.random(n) < 0.5,
        price_misfit=rng.random(n), log_position=np.log(POSITION), hour=rng.integers(24, size=n),
        log_popularity=rng.normal(size=n))
    return LOGITS[preset](base), LOGITS[preset](dataclasses.replace(base, **changes))


def test_clickbait_brand_and_shop_quality_move_conversions_only():
    (click, _, cvr), (click2, _, cvr2) = _logits_with("clickbait", brand_quality=np.zeros(len(POSITION)),
                                                       shop_quality=np.zeros(len(POSITION)))
    assert np.array_equal(click, click2)
    assert np.abs(cvr - cvr2).min() > 0


def test_position_moves_clicks_only_through_examination():
    (click, exam, cvr), (click2, exam2, cvr2) = _logits_with("position", log_position=np.zeros(len(POSITION)))
    assert np.array_equal(click, click2) and np.array_equal(cvr, cvr2)
    assert np.array_equal(exam2 > exam, POSITION > 1) and np.allclose(exam2 / exam, POSITION)


def test_position_clicks_fall_steeply_down_the_page():
    def top_over_bottom(preset):
        _, _, imp = draw(preset=preset)
        return imp.click[imp.position == 1].mean() / imp.click[imp.position >= 10].mean()

    assert top_over_bottom("position") > 5
    assert top_over_bottom("baseline") < 3.5
    _, _, imp = draw(preset="position")
    assert abs(np.corrcoef(np.log(imp.position), imp.p_cvr)[0, 1]) < 0.05


def _tail(preset: str) -> dict[str, float]:
    spec, _, imp = draw(preset=preset)
    half = spec.rows // 2
    shown = {name: np.bincount(ids)[ids] for name, ids in (("item", imp.item), ("user", imp.user))}
    return {"items_rare": (shown["item"] <= 5).mean(), "users_rare": (shown["user"] <= 5).mean(),
            "eval_new_items": (~np.isin(imp.item[half:], imp.item[:half])).mean(),
            "eval_new_users": (~np.isin(imp.user[half:], imp.user[:half])).mean()}


def test_long_tail_has_many_rare_and_new_ids():
    tail, baseline = _tail("long_tail"), _tail("baseline")
    # share of impressions whose item (user) is shown at most 5 times in the whole log
    assert tail["items_rare"] > 0.35 and tail["items_rare"] > 1.5 * baseline["items_rare"]
    assert tail["users_rare"] > 0.25 and tail["users_rare"] > 2 * baseline["users_rare"]
    # share of eval (later half) impressions whose item (user) never appeared in train
    assert tail["eval_new_items"] > 0.25 and tail["eval_new_items"] > 2 * baseline["eval_new_items"]
    assert tail["eval_new_users"] > 0.2 and tail["eval_new_users"] > 4 * baseline["eval_new_users"]
