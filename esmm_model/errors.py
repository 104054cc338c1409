"""Errors a user can act on. The CLI prints their message alone and exits non-zero."""


class EsmmError(Exception):
    """A fatal problem with the user's input, config or environment; the message says how to fix it."""


class ConfigError(EsmmError):
    """The config YAML is invalid; the message names the key."""


class InputError(EsmmError):
    """An input path or file is missing or unusable; the message names it."""
