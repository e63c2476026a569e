#!/usr/bin/env python3
"""Benchmark: how long each `terraform` step of the CRDR cycle takes against real clusters.

Starts its own pgcrdr (control plane + two local regions), installs the provider with
`pgcrdr terraform install`, and per run: plan + apply the Aiven CRDR setup HCL, plan (no
changes), failover by API then failback by applying the unchanged configuration (an in-place
update of the integration: restore, then promote), switchover and switchback by reversing the
integration, state rm + import of both services, output, destroy. Prints the median of each step.

    .venv/bin/python bench/terraform.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import start_platform, stop_platform, wait_for  # noqa: E402
from tests.terraform_helpers import PROJECT, Terraform, reverse_integration  # noqa: E402

PRI, REC = "tfb-pri", "tfb-rec"


def one_run(tf: Terraform) -> None:
    p = tf.platform
    tf.use_example("setup")
    tf.run("plan", step="plan (3 to add)")
    tf.apply("apply: setup (create both + pair)")
    tf.plan_is_empty("plan (no changes)")
    # Some writes, as any real primary has. (A failover right after setup with no write at all
    # makes the later failback_restore fail in the agent's pg_waldump: reported, not handled here.)
    with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_tf (x int)")
        conn.execute("INSERT INTO bench_tf VALUES (1)")
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{PRI}", json={"disaster_recovery_role": "failed"})
        assert r.status_code == 200, r.text
    wait_for("the failover", lambda: p.service(PROJECT, REC)["disaster_recovery_role"] == "active"
             and p.service(PROJECT, PRI)["state"] == "POWEROFF", timeout=180)
    tf.apply("apply: failback (in-place update)")
    tf.write(reverse_integration(tf.read("main.tf")))
    tf.apply("apply: switchover (reverse)")
    tf.use_example("setup")
    tf.apply("apply: switchback (reverse)")
    for addr in ("aiven_service_integration.disaster_recovery", "aiven_postgresql.primary",
                 "aiven_postgresql.recovery"):
        tf.run("state", "rm", addr, step="state rm")
    tf.use_example("failback", "versions.tf", "variables.tf", "services.tf")
    tf.run("import", "aiven_postgresql.primary", f"{PROJECT}/{PRI}", step="import")
    tf.run("import", "aiven_postgresql.recovery", f"{PROJECT}/{REC}", step="import")
    tf.use_example("failback")
    tf.apply("apply: integration over an existing pair (adopt)")
    tf.run("output", "disaster_recovery_status", step="output")
    tf.run("destroy", "-auto-approve", step="destroy (integration, then both)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    p = start_platform(6000)
    tf = Terraform.create(p)
    tf.variables = {"primary_service_name": PRI, "recovery_service_name": REC}
    try:
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", file=sys.stderr)
            one_run(tf)
    finally:
        tf.cleanup()
        stop_platform(p)
    steps: dict[str, list[float]] = defaultdict(list)
    for step, seconds in tf.timings:
        steps[step].append(seconds)
    print(f"| terraform step (median of {args.runs} runs) | seconds | min | max |")
    print("|---|---|---|---|")
    for step, values in steps.items():
        print(f"| {step} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")


if __name__ == "__main__":
    main()
