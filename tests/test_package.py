"""The built wheel is what the image installs: it carries the configs, and `esmm` runs from it outside
the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from esmm_model.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "esmm_model", "pipelines", "serving_client")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds the wheel from a copy of the sources, so the build leaves nothing in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(work / "dist"), str(src)], check=True, capture_output=True)
    (built,) = (work / "dist").glob("esmm_pipeline-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """The wheel installed into its own directory; the shared environment supplies the dependencies."""
    target = wheel.parent.parent / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    return target


def esmm(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    code = "import sys; from pipelines.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_the_wheel_carries_the_packages_and_the_shipped_configs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n for n in names if n.startswith("esmm_model/configs/")} == {
        "esmm_model/configs/__init__.py", "esmm_model/configs/aliccp.yaml", "esmm_model/configs/seed_layout.yaml",
        "esmm_model/configs/simulator.yaml"}
    assert {n.split("/")[0] for n in names if not n.startswith("esmm_pipeline-")} == set(PACKAGES)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "esmm = pipelines.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_esmm_runs_from_the_installed_wheel_outside_the_source_tree(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([sys.executable, "-c", "import esmm_model.config as c; print(c.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed)

    helped = esmm(installed, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "simulate" in helped.stdout and "compile" in helped.stdout

    for config, out in (("aliccp", "by_name"), ("mine.yaml", "by_path")):
        if config == "mine.yaml":
            shutil.copy(installed / "esmm_model" / "configs" / "simulator.yaml", tmp_path / config)
        run = esmm(installed, "simulate", "--config", config, "--csv", "--rows", "300", "--users", "50",
                   "--items", "80", "--out", out, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert len((tmp_path / out / "ground_truth.csv").read_text().splitlines()) == 301
    # the CSV log names its columns after the config's features, so each run shows which config it read
    for config, out in (("aliccp", "by_name"), ("simulator", "by_path")):
        header = (tmp_path / out / "impressions.csv").read_text().splitlines()[0]
        assert header == ",".join(["sample_id", "click", "conversion", *(f.name for f in load_config(config).features)])

    unknown = esmm(installed, "simulate", "--config", "aliccp_v2", "--out", "x", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "Traceback" not in unknown.stderr  # TensorFlow's start-up lines may come first; ours is one line
    assert unknown.stderr.strip().splitlines()[-1] == (
        "esmm simulate: error: config 'aliccp_v2' is neither a shipped config (aliccp, seed_layout, simulator) "
        "nor a path to a .yaml file")
