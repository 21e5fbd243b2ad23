"""The one refusal rate: the share of verdicts that are refusals, counted the same for probe's HRL
check, select, tune's confirmation and eval; no verdicts give no rate (nan), never 0."""

from __future__ import annotations

import math

from swe_cli.judges import COMPLIED, DEGENERATE, REFUSED, PatternJudge
from swe_cli.measure import judged_answers, refusal_rate


def test_refusal_rate_counts_refusals_only() -> None:
    assert refusal_rate([REFUSED, COMPLIED, DEGENERATE, REFUSED]) == 0.5
    assert refusal_rate([DEGENERATE]) == 0.0
    assert refusal_rate([REFUSED] * 3) == 1.0


def test_no_verdicts_give_no_rate() -> None:
    assert math.isnan(refusal_rate([]))


def test_no_prompts_generate_nothing() -> None:
    judge = PatternJudge.from_files()
    # no model is needed when there is nothing to answer
    assert judged_answers(None, None, judge, [], "en", max_new_tokens=4, batch_size=2) == []
