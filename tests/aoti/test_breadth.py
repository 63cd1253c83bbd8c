"""A few architectures from `tests.breadth` (the whole set: ``python -m tests.breadth``): each compiled,
applied and compared with eager on fresh inputs and on the same values in another layout."""

import pytest

from tests import breadth

CASES = {case.name: case for case in breadth.CASES}


@pytest.mark.parametrize("name", breadth.CI_CASES)
def test_compiled_matches_eager_on_fresh_inputs_and_other_layouts(name, cache):
    row = breadth.run(CASES[name], cache)
    assert row["result"] == "matches", row
    assert row["runtime"] == "aoti" and row["guard_fallbacks"] == 0
    assert row["layout_copies"] >= 1  # the other layout ran compiled, on a copy in the built one
    assert max(row["error_fresh"], row["error_other_layout"]) < breadth.TOLERANCE


def test_the_breadth_set_spans_ten_denoisers_and_ten_causal_lms():
    kinds = [case.kind for case in breadth.CASES]
    assert kinds.count("denoiser") >= 10 and kinds.count("causal-lm") >= 10
