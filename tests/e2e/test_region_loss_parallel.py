"""Item 7 of the failure paths: pairs never wait for each other. Three pairs lose their
primaries' region at once and a failover is requested for each at the same moment: their
failovers run side by side (together they take less time than one after the other), every
Service URI takes writes again, and each report says the data given up is unknown (the primary
could not be asked) with a lower bound. Figures for 10 and 25 pairs: bench/region_loss.py."""

from __future__ import annotations

import pytest

from tests.helpers import start_platform, stop_platform
from tests.region_loss import build_pairs, lose_region_and_fail_over, summary


@pytest.fixture(scope="module")
def p():
    plat = start_platform(12000)
    try:
        yield plat
    finally:
        stop_platform(plat)


def test_failovers_of_many_pairs_run_in_parallel(p):
    names = build_pairs(p, 3, prefix="par")
    results = lose_region_and_fail_over(p, names)
    for r in results:
        assert r.op["kind"] == "failover" and r.op["state"] == "done", r.op
        loss = r.op["data_loss"]
        assert loss["known"] is False and loss["bytes"] is None and loss["lower_bound_bytes"] >= 0, loss
        assert r.first_write_s is not None
        assert r.after == [], f"{r.primary}: operations after its failover: {r.after}"  # no false repair
    # Side by side: the failovers overlap, so together they span less time than one after the
    # other would (one thread stepping every pair makes the span at least the sum).
    began = [r.op["details"]["began_at"] for r in results]
    promoted = [r.op["details"]["promoted_at"] for r in results]
    span = max(promoted) - min(began)
    total = sum(b - a for a, b in zip(began, promoted, strict=True))
    assert span < total, (began, promoted)
    print("region loss, 3 pairs:", summary(results))
