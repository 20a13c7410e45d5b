"""The checker protocol shared by every chapter's exercises."""
from __future__ import annotations

import functools
from typing import Callable

__all__ = ["Hint", "checker"]


class Hint(AssertionError):
    """Raised inside a check to say what is wrong and how to fix it."""


def checker(label: str) -> Callable:
    """Turn ``check(answer, ...)`` (which raises ``Hint`` when wrong) into a learner-facing checker.

    ``label`` names the exercise, e.g. ``"Exercise 2.1: merge by hand"``."""

    def wrap(check: Callable) -> Callable:
        @functools.wraps(check)
        def run(*args, **kwargs) -> bool | None:
            try:
                check(*args, **kwargs)
            except NotImplementedError:
                print(f"{label}: not attempted yet. Replace `raise NotImplementedError` with your code.")
                return None
            except Hint as h:
                print(f"{label}: not yet. Hint: {h}")
                return False
            except Exception as e:  # the learner's code crashed: say where, do not raise
                print(f"{label}: your function raised {type(e).__name__}: {e}")
                return False
            print(f"{label}: passed.")
            return True

        return run

    return wrap
