"""Errors that carry a one-line message meant for the user (the CLI prints them without a traceback)."""


class ParisError(Exception):
    """Base class: anything the user can fix or should know about, with a one-line explanation."""


class IntegrityError(ParisError):
    """A file or message failed verification (hash mismatch, truncated, unparsable)."""


class ConfigMismatchError(ParisError):
    """Two things that must agree (checkpoint vs run spec, shard vs manifest) do not."""
