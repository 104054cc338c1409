"""The import contract: layers point one way, down.

model (``esmm_model``) <- contracts (``esmm_model.contracts``) <- step plumbing (``components.beam``,
``components.artifacts``, ``components.progress``) <- steps (one package each, never importing another
step) <- devtools (``components.devtools``) <- pipelines. The serving side (``serving_client``) uses
contracts and the model only. Every import counts, including those inside functions (kfp component bodies).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("esmm_model", "components", "serving_client", "pipelines")
STEPS = ("ingest", "transform", "train", "evaluate", "push")
PLUMBING = ("beam", "artifacts", "progress")


def unit_of(module: str) -> str:
    """The layer unit a dotted module name belongs to: 'model', 'contracts', 'serving', 'plumbing',
    'step:<name>', 'devtools' or 'pipelines'; '' for a module outside the project."""
    parts = module.split(".")
    if parts[0] == "esmm_model":
        return "contracts" if parts[1:2] == ["contracts"] else "model"
    if parts[0] == "serving_client":
        return "serving"
    if parts[0] == "pipelines":
        return "pipelines"
    if parts[0] == "components":
        sub = parts[1] if len(parts) > 1 else ""
        if sub in STEPS:
            return f"step:{sub}"
        if sub == "devtools":
            return "devtools"
        return "plumbing"
    return ""


def allowed(source: str, target: str) -> bool:
    """Whether unit ``source`` may import unit ``target``."""
    if not target or source == target or source == "pipelines":
        return True
    below = {"model": set(), "contracts": {"model"}, "serving": {"model", "contracts"},
             "plumbing": {"model", "contracts"}}
    if source in below:
        return target in below[source]
    if source.startswith("step:"):
        return target in {"model", "contracts", "plumbing"}
    if source == "devtools":
        return target in {"model", "contracts", "plumbing"} or target.startswith("step:")
    raise AssertionError(f"unknown unit {source!r}")


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``source``, relative ones resolved against ``module``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
            # `from pkg import submodule` imports pkg.submodule; a name that is not a module stays within pkg.
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, module: str) -> list[str]:
    unit = unit_of(module)
    return [f"{module}:{line} imports {name} ({unit} -> {unit_of(name)})"
            for line, name in imported_modules(source, module) if not allowed(unit, unit_of(name))]


def project_modules() -> list[tuple[str, Path]]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return modules


def test_every_import_points_down_a_layer():
    problems = [problem for module, path in project_modules() for problem in violations(path.read_text(), module)]
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_contract_walks_every_package():
    units = {unit_of(module) for module, _ in project_modules()}
    assert units == {"model", "contracts", "serving", "plumbing", "devtools", "pipelines",
                     *(f"step:{step}" for step in STEPS)}


@pytest.mark.parametrize("module, source", [
    ("esmm_model.export", "from esmm_model.contracts import layout"),
    ("esmm_model.contracts.warmup", "from serving_client.client import predict_request"),
    ("serving_client.server", "def f():\n    from components.artifacts import storage"),
    ("components.evaluate.executor", "from components.push.executor import push"),
    ("components.beam.runner", "from components.ingest import rows"),
    ("components.push.executor", "from ..evaluate import gate"),
    ("components.train.executor", "import pipelines.cli"),
])
def test_an_upward_or_sideways_import_is_caught(module, source):
    assert violations(source, module)


@pytest.mark.parametrize("module, source", [
    ("components.evaluate.executor", "from esmm_model.contracts.model_store import latest_pushed"),
    ("components.devtools.experiment", "from components.train import executor"),
    ("serving_client.server", "from esmm_model.contracts import layout\nimport tensorflow as tf"),
    ("pipelines.steps", "def f():\n    from components.push.executor import push"),
])
def test_a_downward_import_passes(module, source):
    assert not violations(source, module)
