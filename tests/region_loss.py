"""Many pairs lose their primaries' region at once; one failover request per pair, sent at once.

Shared by ``bench/region_loss.py`` (10 or 25 pairs, a table of figures) and the e2e test
``tests/e2e/test_region_loss_parallel.py`` (3 pairs, pairs must not wait for each other).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

import psycopg

from tests.helpers import RunningPlatform, Writer, wait_for

PROJECT = "pgcrdr"
EU, US = "local-europe-west1", "local-us-east1"


@dataclass
class PairResult:
    primary: str
    requested_at: float = 0.0  # monotonic
    requested_wall: float = 0.0  # epoch, to place the operation's own timestamps
    first_write_s: float | None = None  # from its request to its first acknowledged write after it
    op: dict = field(default_factory=dict)
    after: list[str] = field(default_factory=list)  # operations on the pair after its failover
    ok: int = 0
    lost: int = 0


def _post(p: RunningPlatform, body: dict) -> None:
    with p.api() as c:
        r = c.post(f"/v1/project/{PROJECT}/service", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"create {body['service_name']}: {r.status_code} {r.text}")


def build_pairs(p: RunningPlatform, n: int, prefix: str = "rl") -> list[str]:
    """``n`` startup-4 pairs (primaries in EU, copies in US), built in parallel."""
    names = [f"{prefix}-{i:02d}" for i in range(n)]
    for name in names:
        _post(p, {"service_name": name, "service_type": "pg", "plan": "startup-4", "cloud": EU})
    for name in names:
        wait_for(f"{name} to run", lambda name=name: p.service(PROJECT, name)["state"] == "RUNNING",
                 timeout=120 + 20 * n)
        with psycopg.connect(p.service(PROJECT, name)["service_uri"], autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS acked_writes (id text PRIMARY KEY)")
    for name in names:
        _post(p, {"service_name": name + "-dr", "service_type": "pg", "plan": "startup-4", "cloud": US,
                  "service_integrations": [{"integration_type": "disaster_recovery", "source_service": name}]})
    for name in names:
        wait_for(f"{name}-dr to stream", lambda name=name: p.service(PROJECT, name + "-dr")["state"] == "RUNNING"
                 and _dr(p, name)["operation"] is None, timeout=180 + 20 * n)
    return names


def _dr(p: RunningPlatform, name: str) -> dict:
    with p.api() as c:
        return c.get(f"/v1/project/{PROJECT}/service/{name}/disaster-recovery").json()


def _failover(p: RunningPlatform, name: str) -> dict | None:
    """The pair's failover once it has ended (whatever ran after it)."""
    d = _dr(p, name)
    ops = [o for o in d["history"] if o["kind"] == "failover"]
    return ops[-1] if ops else None


def lose_region_and_fail_over(p: RunningPlatform, names: list[str]) -> list[PairResult]:
    """Writers through every pair's Service URI; the EU region killed; a failover request per
    pair, all at once; each pair's time to its first acknowledged write after its request."""
    writers = {n: Writer(p.service(PROJECT, n)["service_uri"], interval=0.02) for n in names}
    for w in writers.values():
        w.start()
    for n, w in writers.items():
        wait_for(f"writes to {n}", lambda w=w: len(w.log.ok) > 5, timeout=60)
    results = {n: PairResult(n) for n in names}
    try:
        p.pgcrdr("region", "down", EU)
        barrier = threading.Barrier(len(names))

        def fail_over(name: str) -> None:
            barrier.wait()
            results[name].requested_at = time.monotonic()
            results[name].requested_wall = time.time()
            with p.api() as c:
                r = c.put(f"/v1/project/{PROJECT}/service/{name}", json={"disaster_recovery_role": "failed"})
                if r.status_code != 200:
                    raise RuntimeError(f"failover of {name}: {r.status_code} {r.text}")

        threads = [threading.Thread(target=fail_over, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for n in names:
            res, w = results[n], writers[n]

            def first(res: PairResult = res, w: Writer = w) -> float | None:
                later = [t for t in list(w.log.ok_times) if t > res.requested_at]
                return min(later) - res.requested_at if later else None
            res.first_write_s = wait_for(f"a write through {n}'s Service URI", first, timeout=120, interval=0.05)
        for n in names:
            results[n].op = wait_for(f"{n}'s failover to end", lambda n=n: _failover(p, n), timeout=180)
    finally:
        for w in writers.values():
            w.stop()
    for n in names:
        d = _dr(p, n)
        ops = d["history"] + ([d["operation"]] if d["operation"] else [])
        fo = next(i for i, o in enumerate(ops) if o["operation_id"] == results[n].op["operation_id"])
        results[n].after = [f"{o['kind']} {o['state']}" for o in ops[fo + 1:]]
        w = writers[n]
        with psycopg.connect(p.service(PROJECT, n)["service_uri"], connect_timeout=10) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM acked_writes")}
        results[n].ok = len(w.log.ok)
        results[n].lost = len(set(w.log.ok) - stored)
    return [results[n] for n in names]


def summary(results: list[PairResult]) -> dict[str, float]:
    times = [r.first_write_s for r in results if r.first_write_s is not None]
    return {"pairs": len(results), "median_s": statistics.median(times), "max_s": max(times),
            "min_s": min(times), "lost": sum(r.lost for r in results)}
