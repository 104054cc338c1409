"""Every script in benchmarks/ still imports against the current package (a renamed function breaks them silently)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from components import console

PEER_ONLY = {"peer_deepctr"}  # runs in .peer-venv (DeepCTR), never in the project's venv
HELPERS = {"overrides", "load_average"}  # modules the scripts import, with no main of their own
BENCHMARKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
                    if p.stem not in PEER_ONLY)


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))
    # A script quiets its whole process before importing TensorFlow; in the test process that would outlive the test.
    monkeypatch.setattr(console, "quiet_process", lambda: None)
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)) or path.stem in HELPERS
