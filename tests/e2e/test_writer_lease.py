"""Writers that fence themselves: the lab with a global etcd (one member, on the control host),
the control plane's state in it, and every region renewing its writer lease there.

Region A, holding the active writer, is cut off while a client inside it writes to its writer:
A's agent cannot renew its lease and stops its writer before the lease expires; the failover
requested from the control host waits for that expiry (the report says how long) and then
promotes region B. On heal there is exactly one writer, and the commits A took before it fenced
itself are listed in the failover's report and kept by the failback restore.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pgcrdr.agentapi.client import AgentClient
from pgcrdr.controlplane.services import cluster_id
from pgcrdr.lab import heal, in_host, partition
from tests import helpers
from tests.helpers import Writer, WriterProbe, first_after, wait_done, wait_for
from tests.lab_helpers import LabPlatform, ids_in_data_dir, lab_platform

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a lab of network namespaces needs root")  # CI is root

PROJECT = "pgcrdr"
PRI, REC = "fence-primary", "fence-primary-dr"
PRI_CLOUD, REC_CLOUD = "lab-west", "lab-east"
TTL_S = 6  # short, so the test waits little; the default is 10


@pytest.fixture(scope="module")
def lab():
    with lab_platform([PRI_CLOUD, REC_CLOUD], lab_id=f"w{os.getpid() % 10000}", subnet=50 + os.getpid() % 50,
                      store_hosts=("ctl",), extra_env={"PGCRDR_WRITER_LEASE_TTL": str(TTL_S)}) as p:
        yield p



def node_dsns(p: LabPlatform) -> dict[str, str]:
    return p.node_dsns(PROJECT, [(PRI, PRI_CLOUD), (REC, REC_CLOUD)])



def test_a_cut_off_writer_fences_itself_before_the_recovery_is_promoted(lab: LabPlatform):
    p = lab
    p.avn("service", "create", PRI, "--service-type", "pg", "--plan", "startup-4", "--cloud", PRI_CLOUD,
          "--project", PROJECT)
    p.avn("service", "wait", PRI, "--project", PROJECT, "--timeout", "180")
    svc = p.service(PROJECT, PRI)
    import psycopg

    with psycopg.connect(svc["service_uri"], connect_timeout=10) as conn:
        conn.execute("CREATE TABLE acked_writes (id text PRIMARY KEY, at timestamptz DEFAULT now())")
    p.avn("service", "create", REC, "--service-type", "pg", "--plan", "startup-4", "--cloud", REC_CLOUD,
          "--disaster-recovery-copy-for", PRI, "--project", PROJECT)
    p.avn("service", "wait", REC, "--project", PROJECT, "--timeout", "240")

    s = p.settings()
    agent = AgentClient(s.agent_url(s.region(PRI_CLOUD)), p.agent_token(), timeout=10, verify=s.agent_verify)
    own = agent.get_cluster(cluster_id(PROJECT, PRI)).primary
    agent.close()
    pw = svc["service_uri_params"]["password"]
    with in_host(p.lab, "r0"):  # a client inside region A, writing to A's own endpoint
        inside = Writer(f"host={own.host} port={own.port} user=avnadmin password={pw} dbname=defaultdb "
                        "sslmode=require", interval=0.05)
        inside.start()
    service_uri = Writer(svc["service_uri"])
    service_uri.start()
    wait_for("writes inside A and through the Service URI",
             lambda: len(inside.log.ok) > 10 and len(service_uri.log.ok) > 10, timeout=60)

    partition(p.lab, "r0")
    t_partition = time.monotonic()
    p.avn("service", "update", PRI, "--disaster-recovery-role", "failed", "--project", PROJECT)
    t_request = time.monotonic()
    failures = lambda: len(inside.log.failed) + len(inside.log.unknown)  # noqa: E731
    before = failures()
    wait_for("the writer inside A to refuse writes", lambda: failures() > before, timeout=3 * TTL_S, interval=0.05)
    t_fenced = time.monotonic()
    last_ok_inside = max(inside.log.ok_times)
    wait_for("a write through the Service URI in region B",
             lambda: first_after(service_uri.log.ok_times, t_request), timeout=60, interval=0.05)
    t_resumed = first_after(service_uri.log.ok_times, t_request)
    failover = wait_done(p, PROJECT, PRI, "failover", timeout=120)
    wait_s = failover["data_loss"].get("writer_lease_wait_s")
    assert wait_s is not None and wait_s > 0, failover["data_loss"]
    assert last_ok_inside < t_resumed, "A took a write after B was writable: two writers"
    n = len(inside.log.ok)
    time.sleep(2)
    assert len(inside.log.ok) == n, "the fenced writer took writes again while cut off"

    heal(p.lab, "r0")
    probe = WriterProbe(lambda: node_dsns(p), connect=p.connect_node)
    probe.start()
    time.sleep(5)  # the reconciler reaches A again and applies the recorded fence
    probe.stop()
    old = {name for name in node_dsns(p) if name.startswith(cluster_id(PROJECT, PRI))}
    assert not (probe.writers_seen & old) and probe.two_writers == []
    inside_log, uri_log = inside.stop(), service_uri.stop()
    inside_during = {w for w, t in zip(inside_log.ok, inside_log.ok_times, strict=True) if t > t_partition}
    print(f"writer lease (TTL {TTL_S} s): A's writer refused writes {t_fenced - t_partition:.2f} s after the "
          f"partition; the failover waited {wait_s} s for the lease; writes through the Service URI in B "
          f"{t_resumed - t_partition:.2f} s after the partition ({t_resumed - t_request:.2f} s after the "
          f"request); A took {len(inside_during)} commits while cut off before fencing itself")
    assert t_fenced - t_partition <= TTL_S, "A's writer must stop before its lease expires"

    # failback restore: A's commits after the fork are listed in the failover's report and kept
    p.avn("service", "update", PRI, "--disaster-recovery-role", "passive", "--project", PROJECT)
    restore = wait_done(p, PROJECT, PRI, "failback_restore", timeout=300)
    failover = next(o for o in helpers.dr_status(p, PROJECT, PRI)["history"] if o["kind"] == "failover")
    assert failover["data_loss"].get("divergent_commits", -1) >= len(inside_during), failover["data_loss"]
    settings = p.deployment.settings("r0")
    kept = ids_in_data_dir(Path(restore["details"]["preserved"]["path"]), settings.pg_bin_dir, settings.os_user)
    assert inside_during <= kept
    after = {w for w, t in zip(uri_log.ok, uri_log.ok_times, strict=True) if t > t_request}
    assert not (after & kept), "A took a write through the Service URI after the failover"


def test_automatic_failover_moves_the_writer_without_a_request(lab: LabPlatform):
    """The primary, promoted back (the seed's failback step 2), holds the writer again; the pair
    opted in (pgcrdr extension on its disaster-recovery resource); the primary's region is cut
    off: writes through the Service URI resume in the other region without any request."""
    p = lab
    p.avn("service", "update", PRI, "--disaster-recovery-role", "active", "--project", PROJECT)
    wait_done(p, PROJECT, PRI, "failback_promote")
    with p.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery",
                  json={"automatic_failover": {"enabled": True, "grace_seconds": 2, "max_data_loss_bytes": 2 ** 26}})
        assert r.status_code == 200, r.text
    svc = p.service(PROJECT, PRI)
    writer = Writer(svc["service_uri"])
    writer.start()
    wait_for("writes through the Service URI", lambda: len(writer.log.ok) > 10, timeout=60)
    partition(p.lab, "r0")
    t_partition = time.monotonic()
    try:
        wait_for("writes through the Service URI to resume in region B by themselves",
                 lambda: first_after(writer.log.ok_times, t_partition + 0.5), timeout=60, interval=0.05)
        resumed_s = first_after(writer.log.ok_times, t_partition + 0.5) - t_partition
    except AssertionError as exc:
        logged = (p.deployment.settings("ctl").run_dir / "pgcrdr.log").read_text().splitlines()
        said = [ln for ln in logged if "automatic" in ln or "failover" in ln or "Traceback" in ln][-15:]
        raise AssertionError(f"{exc}; control plane said: {said}; DR status: "
                             f"{json.dumps(helpers.dr_status(p, PROJECT, PRI))[:1500]}") from None
    finally:
        heal(p.lab, "r0")
    log = writer.stop()
    failover = helpers.wait_operation(p, PROJECT, PRI, "failover", timeout=60)
    assert failover["state"] == "done", failover
    assert failover["details"]["automatic"].startswith("automatic: lab-west has not answered"), failover
    assert failover["data_loss"]["writer_lease_wait_s"] is not None
    probe = WriterProbe(lambda: node_dsns(p), connect=p.connect_node)
    probe.start()
    time.sleep(5)
    probe.stop()
    old = {name for name in node_dsns(p) if name.startswith(cluster_id(PROJECT, PRI))}
    assert not (probe.writers_seen & old) and probe.two_writers == []
    print(f"automatic failover (grace 2 s, lease TTL {TTL_S} s): writes through the Service URI in region B "
          f"{resumed_s:.2f} s after the partition, no request; {len(log.ok)} acknowledged writes in all; "
          f"{failover['details']['automatic']}")
