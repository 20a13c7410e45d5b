"""The protocol every exercise checker keeps (``minilora.course.exercises._core``), as tests the chapters share.

A chapter's test module lists ``CASES = [(check, solution, {name: wrong answer})]`` and binds

    test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = protocol_tests(CASES)

so that for every checker a stub is "not attempted" (returns None), the solution passes (True), and
every wrong answer fails (False) with a hint. Which hint each mistake gets is listed in the chapter's module,
whose one-line ``test_hints_are_specific`` calls ``assert_specific_hint`` (so a failure names the chapter).
"""
import pytest


def stub(*args):
    raise NotImplementedError


def protocol_tests(cases, *, hint_required=False):
    """The three protocol tests over ``cases``. A wrong answer that raises may report the exception
    instead of a hint, unless ``hint_required``."""

    @pytest.mark.parametrize("check", [c for c, _, _ in cases], ids=lambda c: c.__name__)
    def test_stub_is_not_attempted(check, capsys):
        assert check(stub) is None
        assert "not attempted yet" in capsys.readouterr().out

    @pytest.mark.parametrize("check,solution", [(c, s) for c, s, _ in cases], ids=lambda x: x.__name__)
    def test_solution_passes(check, solution, capsys):
        assert check(solution) is True
        assert "passed" in capsys.readouterr().out

    @pytest.mark.parametrize("check,wrong", [(c, w) for c, _, ws in cases for w in ws.values()],
                             ids=[f"{c.__name__}-{k}" for c, _, ws in cases for k in ws])
    def test_wrong_answer_fails_with_a_hint(check, wrong, capsys):
        assert check(wrong) is False
        out = capsys.readouterr().out
        assert "Hint:" in out or (not hint_required and "raised" in out)

    return test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint


def assert_specific_hint(wrong, fragment, capsys, *, cases=(), check=None):
    """The checker fails ``wrong`` (returns False) and its printed hint contains ``fragment``.

    The checker is the one in ``cases`` whose wrong answers include ``wrong`` (by identity), else ``check``
    (a checker named directly, or the one for a wrong answer written only for this test)."""
    found = next((c for c, _, ws in cases if any(w is wrong for w in ws.values())), check)
    assert found is not None, "this wrong answer is in no case of CASES: name its checker with check="
    assert found(wrong) is False
    out = capsys.readouterr().out
    assert fragment in out, f"the hint should say {fragment!r}; {found.__name__} printed:\n{out}"
