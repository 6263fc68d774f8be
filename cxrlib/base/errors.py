"""Errors the user can act on.

Anything raised as :class:`CxrError` is printed by the ``cxr`` command as one line
(``cxr: error: <message>``) and exits non-zero; every other exception is a bug and
keeps its traceback under ``--debug``.
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
