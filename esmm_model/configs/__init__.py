"""Configs shipped with the package; `esmm --config NAME` and `load_config(NAME)` read them by name."""
