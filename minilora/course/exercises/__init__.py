"""Exercise checkers, one module per chapter (``minilora.course.exercises.ch02`` ...).

Every exercise is a function the learner writes. Its stub raises ``NotImplementedError``; the
checker calls it and prints one of three things:

* ``not attempted yet`` (the stub is untouched) and returns ``None``;
* a specific hint when the answer is wrong, and returns ``False``;
* ``passed`` and returns ``True``. Solution notebooks assert ``check(...) is True``.
"""
from ._core import Hint, checker

__all__ = ["Hint", "checker"]
