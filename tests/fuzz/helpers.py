"""What every fuzz test checks of an error: the project's one-line error naming its input."""

from __future__ import annotations

from hypothesis import settings

from cxrlib.base.errors import CxrError, ManifestError


def assert_one_line(err: BaseException, *names: str) -> None:
    """``err`` is a :class:`CxrError` whose message is one line naming one of ``names``.

    A :class:`ManifestError` lists one problem a line by design: its first line and
    every problem line name the manifest instead.
    """
    assert isinstance(err, CxrError), f"{type(err).__name__}: {err}"
    message = str(err)
    if isinstance(err, ManifestError):
        first, *problems = message.splitlines()
        assert problems, message
        for problem in problems:
            text = problem.strip()
            assert text.startswith("... and ") or any(text.startswith(n) for n in names), text
    else:
        first = message
        assert "\n" not in message and "\r" not in message, repr(message)
    assert first.strip(), repr(message)
    assert any(name in first for name in names), message


def fewer(divisor: int) -> settings:
    """The loaded profile with ``divisor`` times fewer examples: for the end-to-end tests
    (a whole adapter run per example), so ``make test-all`` stays within its time."""
    current = settings()
    return settings(current, max_examples=max(20, current.max_examples // divisor))
