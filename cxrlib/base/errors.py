"""Errors the user can act on.

:class:`CxrError` (and its subclasses) is for bad user input and files: a value from a
config file, ``--set`` or a flag, or a manifest, CSV, image, mask or run folder, named
in the message (the file, row, key or flag). The ``cxr`` command prints it as one line
(``cxr: error: <message>``) and exits non-zero. ``ValueError`` and ``TypeError`` mean a
calling program misused the API (shapes, exclusive arguments, internal invariants):
like every other exception they are bugs and keep their traceback under ``--debug``.
"""

from __future__ import annotations


class CxrError(Exception):
    """A problem with the user's input (file, argument, data), stated in one line."""


class ManifestError(CxrError):
    """A manifest failed validation; ``problems`` holds one line per problem found."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:50])
        more = len(self.problems) - 50
        tail = f"\n  ... and {more} more" if more > 0 else ""
        n = len(self.problems)
        super().__init__(f"{path}: {n} problem{'s' * (n != 1)} in manifest\n{shown}{tail}")


def one_line(err: BaseException) -> str:
    """An exception's message with its whitespace collapsed to one line (its type name
    when it has none): how a library's error text goes inside a :class:`CxrError`."""
    return " ".join(str(err).split()) or type(err).__name__
