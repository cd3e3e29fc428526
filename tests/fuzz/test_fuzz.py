"""Fuzzed slide files never break the tool: a few hundred seeded mutations of the shared
fixtures and of slides built here, each opened and read as ``info``, the viewer and an
analysis do, in a worker process (:mod:`tests.fuzz.harness`). Every case must end in success
or one of our errors with a printable message: no traceback, no crash, no hang.

``python benchmarks/fuzz.py`` runs thousands of cases and prints the outcome table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import KINDS, build_bases, cases, outcome_counts, run_cases, table

#: Cases per run: every base x every mutation kind, several seeds each (~15 s on 2 cores).
CASES = 320
#: A case that takes this long is a hang (the slowest take well under a second).
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_bases(tmp_path_factory.mktemp("fuzz-bases"))


def test_fuzzed_slides_end_in_success_or_our_error(bases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    results = run_cases(cases(bases, CASES, seed=0), tmp_path, timeout_s=TIMEOUT_S)
    counts = outcome_counts(results)
    bad = [r for r in results if r.outcome in ("traceback", "signal", "hang")]
    assert not bad, (
        table(results) + "\n" + "\n".join(f"{r.case.label}: {r.outcome} {r.detail}" for r in bad)
    )
    unescaped = [r for r in results if r.unescaped]
    assert not unescaped, [f"{r.case.label}: {r.detail}" for r in unescaped]
    # The mutations reach both outcomes: a harness where everything fails (or nothing
    # does) tests nothing.
    assert counts["success"] > CASES // 10
    assert counts["clean error"] > CASES // 10
    assert {r.case.kind for r in results} == set(KINDS)


def test_a_case_is_reproduced_from_its_seed(bases, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.fuzz.harness import Case, make_case

    case = Case(bases[0], "codestream", 7)
    first = make_case(case, tmp_path / "a").read_bytes()
    again = make_case(case, tmp_path / "b").read_bytes()
    other = make_case(Case(bases[0], "codestream", 8), tmp_path / "c").read_bytes()
    assert first == again
    assert first != other
    assert first != bases[0].files[0].read_bytes()
