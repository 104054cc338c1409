"""The component image recipe, checked without a container engine: stages, pins, user, build context."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cc|make|gfortran)\b")


def stages() -> list[tuple[str, list[str]]]:
    """(FROM line, instructions) per stage, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    result: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append((line, []))
        elif result:
            result[-1][1].append(line)
    return result


def packages() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}


def test_two_stages_and_the_final_one_has_no_compilers_and_installs_nothing():
    (build_from, build), (final_from, final) = stages()
    assert build_from.endswith(" AS build") and final_from.endswith(" AS runtime")
    assert any(COMPILERS.search(line) for line in build)  # sdists can compile in the build stage...
    assert not any(COMPILERS.search(line) for line in final)  # ...and none of that reaches the image
    assert not any(re.search(r"\b(apt-get|pip) install\b", line) for line in final)
    assert "COPY --from=build /opt/esmm /opt/esmm" in final
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-\w+", base)  # slim images carry no compiler; Python as pyproject


def test_dependencies_are_installed_with_the_constraints_and_the_project_without_resolving_again():
    _, build = stages()[0]
    installs = [line for line in build if "pip install" in line]
    assert any("--constraint constraints.txt --requirement requirements.txt" in line for line in installs)
    assert any("--constraint constraints.txt --no-deps ." in line for line in installs)
    assert any("pip check" in line for line in installs)


def test_every_requirement_of_the_image_is_pinned_exactly_by_the_constraints(tmp_path):
    """Runs the build stage's requirements snippet and checks each requirement against constraints.txt."""
    _, build = stages()[0]
    (snippet,) = [re.search(r'python -c "(.*?)"\s*>', line).group(1) for line in build if "tomllib" in line]
    extras = re.search(r"^ARG EXTRAS=(\S*)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    requirements = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env={"EXTRAS": extras},
                                  capture_output=True, text=True, check=True).stdout.split()
    assert "apache-beam[gcp]==2.77.0" in requirements  # Beam's gs:// filesystem, for object-store paths
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split())
    canonical = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}
    for requirement in requirements:
        name = re.sub(r"[-_.]+", "-", re.match(r"[\w.-]+", requirement).group(0)).lower()
        assert name in canonical, f"{requirement} has no pin in constraints.txt"


def test_the_final_stage_runs_as_a_numeric_non_root_user():
    _, final = stages()[-1]
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes' runAsNonRoot can verify it


def test_the_build_copies_every_package_and_the_context_holds_what_it_copies():
    _, build = stages()[0]
    copied = {src for line in build if line.startswith("COPY ") and "--from" not in line
              for src in line.split()[1:-1]}
    assert packages() <= copied
    for src in copied:
        assert (ROOT / src).exists(), src
        assert in_context(src), f"{src} is copied but .dockerignore leaves it out of the build context"
    for left_out in ("tests", "k8s", ".venv", "demo_out", ".git"):
        assert not in_context(left_out), left_out


def in_context(path: str) -> bool:
    """Whether .dockerignore sends ``path`` to the build: the last matching pattern wins, ``!`` re-includes."""
    included = True
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if pattern and not pattern.startswith("#") and fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
            included = pattern.startswith("!")
    return included


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_image_builds_the_dockerfile_with_the_given_tag():
    dry_run = subprocess.run(["make", "--no-print-directory", "-n", "image", "IMAGE=registry.example/esmm:1.2.3"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert dry_run.strip().splitlines() == ["docker build --tag registry.example/esmm:1.2.3 ."]


def test_the_image_doubles_as_the_beam_workers_container_of_the_pinned_release():
    _, final = stages()[-1]
    beam = re.search(r"^apache-beam==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert f"COPY --from=apache/beam_python3.11_sdk:{beam} /opt/apache/beam /opt/apache/beam" in final
    entrypoint = json.loads(next(line for line in final if line.startswith("ENTRYPOINT ")).split(None, 1)[1])
    run = ["sh", *entrypoint[1:]] if entrypoint[0] == "/bin/sh" else entrypoint
    script = run[2].replace("exec /opt/apache/beam/boot", "echo boot").replace('exec "$@"', 'echo run "$@"')
    launch = subprocess.run(["sh", "-c", script, "entrypoint", "--id=1", "--control_endpoint=localhost:1"],
                            capture_output=True, text=True, check=True)
    assert launch.stdout.split() == ["boot", "--id=1", "--control_endpoint=localhost:1"]  # a runner starting a worker
    command = subprocess.run(["sh", "-c", script, "entrypoint", "esmm", "--help"],
                             capture_output=True, text=True, check=True)
    assert command.stdout.split() == ["run", "esmm", "--help"]


def final_env() -> dict[str, str]:
    """The final stage's ENV settings (KEY=VALUE form), in order."""
    _, final = stages()[-1]
    env: dict[str, str] = {}
    for line in final:
        if line.upper().startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


# Beam's Python boot (apache/beam sdks/python/container/boot.go, the Beam release the image copies):
#   if os.Getenv("RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT") == "" { setupVenv(ctx, logger, "/opt/apache/beam-venv", *id) }
# This stand-in makes the same decision, with the venv directory under a root-owned stand-in of /opt/apache.
BOOT = """#!/bin/sh
if [ -z "$RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT" ]; then
    mkdir "$BEAM_VENV" || { echo "failed to create a virtual environment" >&2; exit 1; }
fi
echo "worker $*"
"""


@pytest.fixture
def image_root():
    """A stand-in of the image's /opt/apache, owned by root (or read-only), readable by anyone."""
    root = Path(tempfile.mkdtemp(prefix="esmm-image-"))
    try:
        root.chmod(0o755)
        apache = root / "opt" / "apache"
        (apache / "beam").mkdir(parents=True)
        boot = apache / "beam" / "boot"
        boot.write_text(BOOT)
        boot.chmod(0o755)
        for path in (root / "opt", apache, apache / "beam"):
            path.chmod(0o755 if os.geteuid() == 0 else 0o555)  # uid 1000 cannot write it, as in the image
        yield apache
    finally:
        for path in (root / "opt", root / "opt" / "apache", root / "opt" / "apache" / "beam"):
            path.chmod(0o755)
        shutil.rmtree(root)


def start_worker(apache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The image's ENTRYPOINT as a runner starts a worker (flags only), as the image's user uid 1000."""
    _, final = stages()[-1]
    entrypoint = json.loads(next(line for line in final if line.startswith("ENTRYPOINT ")).split(None, 1)[1])
    script = entrypoint[2].replace("/opt/apache/beam/boot", str(apache / "beam" / "boot"))
    as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"] if os.geteuid() == 0 else []
    environment = {**env, "PATH": "/usr/bin:/bin", "HOME": "/home/esmm", "BEAM_VENV": str(apache / "beam-venv")}
    return subprocess.run([*as_user, "sh", "-c", script, "entrypoint", "--id=1", "--control_endpoint=localhost:1"],
                          env=environment, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="no setpriv to drop root")
def test_beam_workers_start_as_the_images_non_root_user_in_its_own_environment(image_root):
    env = final_env()
    assert env.get("RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT")  # boot.go checks for any non-empty value
    started = start_worker(image_root, env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["worker", "--id=1", "--control_endpoint=localhost:1"]
    assert not (image_root / "beam-venv").exists()
    # without the variable, boot's venv under /opt/apache fails for uid 1000: what the image shipped before
    without = start_worker(image_root, {k: v for k, v in env.items() if k != "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"})
    assert without.returncode == 1 and "failed to create a virtual environment" in without.stderr
