"""``--set section.key=value`` command-line overrides of a config, shared by the benchmarks."""
from __future__ import annotations

from esmm_model.config import Config, parse_yaml, with_overrides
from esmm_model.errors import ConfigError


def apply_overrides(config: Config, settings: list[str]) -> Config:
    """``config`` with each ``a.b.c=value`` (value parsed as the config's YAML) merged in and re-validated."""
    for text in settings:
        key, _, value = text.partition("=")
        if not value or not key:
            raise ConfigError(f"--set {text!r}: write KEY.PATH=VALUE, e.g. training.embedding_optimizer=lazy_adam")
        node: dict = {}
        root = node
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parse_yaml(value)
        config = with_overrides(config, root)
    return config
