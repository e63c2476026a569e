#!/usr/bin/env python3
"""Benchmark: many pairs lose their primaries' region at once.

Starts its own pgcrdr under a scratch home, builds N startup-4 pairs (primaries in
local-europe-west1, recovery copies in local-us-east1), writes through every pair's Service URI,
kills the primaries' region (`pgcrdr region down`), then sends one failover request per pair,
all at once. Prints, per pair, the time from its request to its first acknowledged write
through its Service URI, the median and the maximum, and the acknowledged writes lost (a
failover gives up the un-replicated tail: the operation's data_loss reports it).

    .venv/bin/python bench/region_loss.py --pairs 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import start_platform, stop_platform  # noqa: E402
from tests.region_loss import build_pairs, lose_region_and_fail_over, summary  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--port-offset", type=int, default=15000)
    args = ap.parse_args()
    if not 1 <= args.pairs <= 60:
        ap.error("--pairs must be 1 to 60")
    p = start_platform(args.port_offset)
    try:
        print(f"building {args.pairs} pairs ...", flush=True)
        names = build_pairs(p, args.pairs, prefix="bench-rl")
        results = lose_region_and_fail_over(p, names)
    finally:
        stop_platform(p)
    print("\nTimes from each pair's request: its operation's first step began, its recovery service was")
    print("writable (promote answered), and the first acknowledged write through its Service URI.")
    print(f"\n{'pair':<14} {'began s':>8} {'promoted s':>11} {'first write s':>14} {'promote step s':>15} "
          f"{'data given up':>20} {'acked lost':>10}")
    for r in results:
        loss = r.op.get("data_loss") or {}
        given = (f"{loss['bytes']} B" if loss.get("bytes") is not None
                 else f"unknown (>= {loss.get('lower_bound_bytes', 0)} B)")
        promote = next((s.get("duration_s") for s in r.op.get("steps", []) if s["name"] == "promote"), None)
        det = r.op.get("details") or {}
        began = det.get("began_at", r.requested_wall) - r.requested_wall
        promoted = det.get("promoted_at", r.requested_wall) - r.requested_wall
        print(f"{r.primary:<14} {began:>8.3f} {promoted:>11.3f} {r.first_write_s:>14.3f} "
              f"{promote if promote is not None else '-':>15} {given:>20} {r.lost:>10}")
    later = {r.primary: r.after for r in results if r.after}
    if later:
        print(f"\noperations after the failover (none expected): {later}")
    s = summary(results)
    print(f"\npairs {s['pairs']}: first write after the request: median {s['median_s']:.3f} s, "
          f"min {s['min_s']:.3f} s, max {s['max_s']:.3f} s (max/median {s['max_s'] / s['median_s']:.2f}); "
          f"acknowledged writes lost {s['lost']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
