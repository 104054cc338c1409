"""Directory copies and publication through ``tf.io.gfile``: local disks, mounted volumes and object stores alike.

A finished directory is published under its final name in one of two ways. Where directory
rename is atomic (local disks and mounted volumes, POSIX rename), by renaming it: the final
name holds the whole directory or nothing. Elsewhere (``gs://``, TensorFlow's ``ram://``)
gfile renames object by object in any order, or not at all for directories, so the
directory is copied file by file with ``saved_model.pb`` last, then the source deleted: a
crash mid-way leaves a directory TF Serving cannot load, never one it loads half-written.
"""
from __future__ import annotations

import posixpath

import tensorflow as tf

from esmm_model.contracts.layout import SAVED_MODEL_PB

# Filesystems whose directory rename is atomic; every other scheme is treated as an object store.
ATOMIC_RENAME_SCHEMES = frozenset({"", "file", "hdfs"})


def scheme(path: str) -> str:
    """``gs`` for ``gs://b/x``, ``""`` for a local path."""
    return path.split("://", 1)[0] if "://" in path else ""


def has_atomic_rename(path: str) -> bool:
    return scheme(path) in ATOMIC_RENAME_SCHEMES


def relative_files(root: str) -> list[str]:
    """Every file under ``root``, as paths relative to it.

    Each listed name is checked to exist: TensorFlow's ``ram://`` filesystem lists by bare
    prefix, so ``assets/`` also "holds" ``.extra/`` when ``assets.extra/`` is its sibling.
    """
    root = root.rstrip("/")
    files = (posixpath.join(dirpath, name) for dirpath, _, names in tf.io.gfile.walk(root) for name in names)
    return [path[len(root):].lstrip("/") for path in files if tf.io.gfile.exists(path)]


def copy_tree(src: str, dst: str) -> None:
    """Copies the directory ``src`` to ``dst`` (created), file by file."""
    for rel in relative_files(src):
        target = posixpath.join(dst, rel)
        tf.io.gfile.makedirs(posixpath.dirname(target))
        tf.io.gfile.copy(posixpath.join(src, rel), target)


def publish(tmp: str, final: str) -> None:
    """Makes the finished directory ``tmp`` visible as ``final``; ``tmp`` is gone afterwards."""
    if has_atomic_rename(final):
        tf.io.gfile.rename(tmp, final)
        return
    files = relative_files(tmp)
    files.sort(key=lambda rel: rel == SAVED_MODEL_PB)
    tf.io.gfile.makedirs(final)
    for rel in files:
        target = posixpath.join(final, rel)
        tf.io.gfile.makedirs(posixpath.dirname(target))
        tf.io.gfile.copy(posixpath.join(tmp, rel), target)
    remove_tree(tmp)


def remove_tree(path: str) -> None:
    """Deletes the directory tree ``path``.

    ``tf.io.gfile.rmtree`` everywhere but on ``ram://``, whose prefix listing names files that
    do not exist (see ``relative_files``) and makes rmtree fail: there files, then
    directories deepest first, are deleted one by one.
    """
    if scheme(path) != "ram":
        tf.io.gfile.rmtree(path)
        return
    root = path.rstrip("/")
    directories = [dirpath for dirpath, _, _ in tf.io.gfile.walk(root)]
    for rel in relative_files(root):
        tf.io.gfile.remove(posixpath.join(root, rel))
    for directory in sorted(directories, key=len, reverse=True):
        tf.io.gfile.remove(directory)


def remove_if_present(path: str) -> None:
    """Deletes a directory tree if it exists."""
    if tf.io.gfile.exists(path):
        remove_tree(path)


def remove_file_if_present(path: str) -> None:
    """Deletes a file before it is written anew: ``ram://`` does not truncate a file opened for writing."""
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path``, replacing the file, creating its directory."""
    if posixpath.dirname(path):
        tf.io.gfile.makedirs(posixpath.dirname(path))
    remove_file_if_present(path)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()
