"""The experiment machinery (Table 2, sparsity sweep) on tiny data with 2 repeats."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from components.devtools.experiment import (
    METRICS,
    epoch_order,
    load_data,
    read_runs,
    run_experiment,
    table2_markdown,
    write_outputs,
)
from components.transform.executor import transform
from esmm_model.config import config_from_dict, load_config
from pipelines.cli import main as esmm
from raw_examples import random_rows, write_ingest_dir

ROWS = ("BASE", "AMAN", "ESMM")
SWEEP = ("ESMM",)


def tiny_config():
    data = load_config("simulator").to_dict()
    data["model"].update(tower_units=[16, 8], embedding_dim=4)
    data["training"].update(batch_size=32, epochs=1)
    return config_from_dict(data)


def test_window_shuffle_permutes_within_windows_and_full_shuffle_everywhere():
    rows = np.arange(1000)
    window = epoch_order(rows, batch_size=50, shuffle="window", seed=0)  # windows of 4 batches: 200 rows
    assert sorted(window) == list(rows)
    for start in range(0, 1000, 200):
        assert sorted(window[start:start + 200]) == list(range(start, start + 200))
    assert not np.array_equal(window, rows)
    np.testing.assert_array_equal(epoch_order(rows, batch_size=50, shuffle="window", seed=0), window)
    assert not np.array_equal(epoch_order(rows, batch_size=50, shuffle="window", seed=1), window)
    full = epoch_order(rows, batch_size=50, shuffle="full", seed=0)
    assert sorted(full) == list(rows)
    assert any(not start <= full[start] < start + 200 for start in range(0, 1000, 200))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    config = tiny_config()
    train_rows, eval_rows = random_rows(config, 160, seed=1), random_rows(config, 96, seed=2)
    ingest = write_ingest_dir(config, root / "ingest", train_rows, eval_rows)
    outputs = transform(config, ingest, root / "transform", ["--runner=DirectRunner"])
    rng = np.random.default_rng(3)
    truth = root / "ground_truth.csv"
    with open(truth, "w") as f:
        f.write("sample_id,p_click,p_cvr,would_convert\n")
        for row in eval_rows:
            would = row["conversion"] or int(rng.random() < 0.3)
            f.write(f"{row['sample_id']},{0.2 + 0.6 * row['click']:.3f},{0.1 + 0.5 * would:.3f},{would}\n")
    return load_data(config, outputs.root, str(ingest), str(truth)), root


@pytest.mark.slow
def test_two_repeats_give_the_table_shape_and_std_across_repeats(data, tmp_path):
    loaded, _ = data
    assert len(loaded.train) == 160 and len(loaded.eval) == 96 and loaded.eval.truth.shape == (96, 3)
    result = run_experiment(loaded, repeats=2, rows=ROWS, fractions=(0.5, 1.0), sweep_rows=SWEEP,
                            progress=lambda _: None)

    assert len(result.runs) == 2 * (len(ROWS) + len(SWEEP))
    assert {(r["row"], r["fraction"]) for r in result.runs} == {*((row, 1.0) for row in ROWS),
                                                                *((row, 0.5) for row in SWEEP)}
    seeds = sorted({r["seed"] for r in result.runs})
    assert seeds == [42, 43]
    summary = result.summary(ROWS)
    for row in ROWS:
        for metric in METRICS:
            values = [r[metric] for r in result.runs if r["row"] == row and r["fraction"] == 1.0]
            mean, std, repeats = summary[row][metric]
            assert repeats == 2
            assert mean == pytest.approx(np.mean(values))
            assert std == pytest.approx(abs(values[0] - values[1]) / np.sqrt(2))  # sample std of two values
    assert any(summary[row][metric][1] > 0 for row in ROWS for metric in METRICS)
    # One separately trained CTR network (BASE's) gives every non-ESMM row its pCTR.
    for seed in seeds:
        ctr = {r["row"]: r["ctr_auc"] for r in result.runs if r["seed"] == seed and r["fraction"] == 1.0}
        assert ctr["AMAN"] == ctr["BASE"]
    # The oracle row scores the true probabilities: would_convert is a function of p_cvr here.
    assert result.oracle["entire_space_cvr_auc"] == 1.0

    table = table2_markdown(result, ROWS).splitlines()
    assert table[0] == "| model | CVR AUC on clicked | CTCVR AUC | entire-space CVR AUC | CTR AUC |"
    assert [line.split(" | ")[0][2:] for line in table[2:]] == [*ROWS, "oracle (true probabilities)"]
    for line in table[2:-1]:
        assert len(re.findall(r"\d\.\d{4} ± \d\.\d{4}", line)) == len(METRICS)

    paths = write_outputs(result, str(tmp_path), ROWS, SWEEP, (0.5, 1.0))
    for name in ("table2.md", "table2.csv", "table2.png", "runs.csv", "sparsity.md", "sparsity.png"):
        assert Path(paths[name]).stat().st_size > 0
    with open(paths["table2.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == [*ROWS, "oracle"]
    assert float(rows[0]["ctr_auc_std"]) == pytest.approx(summary["BASE"]["ctr_auc"][1], abs=1e-6)
    # Runs written by separate processes merge back into the same table.
    again = read_runs([paths["runs.csv"]])
    assert again.oracle == result.oracle
    assert table2_markdown(again, ROWS) == table2_markdown(result, ROWS)


def test_experiment_command_rejects_a_bad_sampling_rate(capsys):
    assert esmm(["experiment", "--transform-dir", "x", "--ingest-dir", "y", "--out", "z", "--fractions", "0.5,2"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "esmm experiment: error: --fractions: 2.0 is not a sampling rate in (0, 1]"
