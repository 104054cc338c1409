"""Static check: the steps, the export, the kfp components and the server reach files only through
tf.io.gfile or Beam's FileSystems, so every path may be a URI (``gs://``, ``ram://``).

``pathlib`` turns ``gs://b/x`` into ``gs:/b/x``; ``open()``, ``shutil``, ``tempfile`` and the
file-touching parts of ``os`` and ``os.path`` know only the local disk; ``os.path.normpath``,
``abspath``, ``realpath`` and ``relpath`` mangle a URI too. ``os.path.join``, ``dirname``,
``basename``, ``split`` and ``splitext`` are plain string functions and stay allowed.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# components/console.py opens file descriptors (the stderr filter), never a data path.
CHECKED = sorted([*(p for p in (REPO / "components").rglob("*.py") if p.name != "console.py"),
                  *(REPO / "esmm_model" / "contracts").glob("*.py"),
                  REPO / "esmm_model" / "export.py",
                  REPO / "serving_client" / "server.py",
                  REPO / "pipelines" / "steps.py"])
LOCAL_ONLY_MODULES = {"pathlib", "shutil", "tempfile"}
STRING_ONLY_OS_PATH = {"join", "basename", "dirname", "split", "splitext", "sep"}
FILE_TOUCHING_OS = {"listdir", "makedirs", "mkdir", "remove", "unlink", "rename", "replace", "walk", "scandir", "stat",
                    "rmdir", "removedirs", "open", "chdir", "getcwd"}


def violations(source: str) -> list[str]:
    """Every local-only file access in ``source``, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in LOCAL_ONLY_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in LOCAL_ONLY_MODULES or node.module == "os.path" or (root == "os" and any(
                    a.name in FILE_TOUCHING_OS | {"path"} for a in node.names)):
                found.append(f"{node.lineno}: from {node.module} import ...")
            if root == "io" and any(a.name == "open" for a in node.names):
                found.append(f"{node.lineno}: from io import open")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            found.append(f"{node.lineno}: open()")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner = node.value
            if (isinstance(inner.value, ast.Name) and inner.value.id == "os" and inner.attr == "path"
                    and node.attr not in STRING_ONLY_OS_PATH):
                found.append(f"{node.lineno}: os.path.{node.attr}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "os" and node.attr in FILE_TOUCHING_OS:
                found.append(f"{node.lineno}: os.{node.attr}")
            if node.value.id == "io" and node.attr == "open":
                found.append(f"{node.lineno}: io.open")
    return sorted(found, key=lambda v: int(v.split(":")[0]))


# Local on purpose, one use each: a non-chief tf.distribute worker writes its copy of the
# outputs (which MultiWorkerMirroredStrategy makes every worker save) to a throwaway local
# directory, as TensorFlow's multi-worker guide does, removed when it is done; no data path goes through it.
ALLOWED = {"components/train/executor.py": {"import tempfile", "tempfile.TemporaryDirectory"}}


def _uses(source: str, what: str) -> int:
    return sum(what in line for line in source.splitlines())


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_file_access_goes_through_gfile_or_beam(path):
    name = str(path.relative_to(REPO))
    source = path.read_text()
    allowed = ALLOWED.get(name, set())
    found = [v for v in violations(source) if v.split(": ", 1)[1] not in allowed]
    assert found == [], f"{name} touches files without tf.io.gfile"
    assert all(_uses(source, what) == 1 for what in allowed), f"{name}: an allowed local access spread"


def test_the_check_catches_each_local_only_access():
    bad = """
import os, shutil
import pathlib
from pathlib import Path
from os.path import exists
from tempfile import TemporaryDirectory
with open("x") as f:
    pass
os.makedirs("d")
os.path.exists("d")
os.path.normpath("gs://b/x")
os.path.join("gs://b", "x")
tf.io.gfile.GFile("x").read()
FileSystems.open("x")
"""
    assert violations(bad) == ["2: import shutil", "3: import pathlib", "4: from pathlib import ...",
                               "5: from os.path import ...", "6: from tempfile import ...", "7: open()",
                               "9: os.makedirs", "10: os.path.exists", "11: os.path.normpath"]
