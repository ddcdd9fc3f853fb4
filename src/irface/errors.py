"""Errors caused by the user's input (files, arguments, configuration).

The CLI turns any `UserError` into one line on stderr and a non-zero exit instead of a traceback;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from typing import Any


class UserError(Exception):
    """Bad input from the user: the message names the file or key and what is wrong."""


class ConfigError(UserError):
    """An unknown configuration key, a wrong type or a contradiction between settings."""


class DataError(UserError):
    """A data file (RecordIO, image folder, `.bin`) that cannot be read as promised."""


class ModelFileError(UserError):
    """A model or checkpoint file that cannot be loaded, or does not match what was asked."""


class OutputError(UserError):
    """An output that cannot be written (a file where a folder is needed, no permission, a full disk).

    `reason` is the system's short reason ("No space left on device"), for callers that reword it.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class GalleryError(UserError):
    """A gallery file that is damaged, from another model, or asked to do what it cannot (a bad identity name)."""


class GalleryUnavailable(GalleryError):
    """The gallery's database cannot be reached now (down, restarting, network): a server answers 503."""

    status = 503


def first_line(e: BaseException) -> str:
    """`Type: first line of the message` (or just `Type`): a foreign exception inside our one-line errors."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def missing_extra(what: str, package: str, extra: str) -> str:
    """The one wording of a missing optional dependency: the pyproject extra that brings it, and how."""
    return f"{what} needs {package}, from the {extra} extra: pip install 'irface[{extra}]'"


def import_extra(module: str, what: str, extra: str, error: type[UserError] = ConfigError) -> Any:
    """`module`, imported when first needed (extras are never imported at a module's top), or `error` in
    one line naming the extra when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(missing_extra(what, module.split(".")[0], extra)) from None
