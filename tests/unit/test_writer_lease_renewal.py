"""The writer lease against a real etcd: the agent's writer is allowed only while its lease is
renewed, it stops being allowed *before* etcd lets the key go (the control plane promotes only
once the key is gone), and an expired lease is granted anew."""

from __future__ import annotations

import time
import uuid

from pgcrdr.etcdv3 import EtcdGateway
from pgcrdr.writer_lease import WriterLease, lease_holder, margin_for


def _wait(check, timeout: float) -> float:  # noqa: ANN001
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)
    return time.monotonic() - t0


def test_a_writer_is_allowed_while_renewed_and_fenced_before_the_key_expires(etcd_server):
    prefix = f"/pgcrdr-test/{uuid.uuid4().hex}/"
    gw = EtcdGateway(etcd_server.endpoints)
    lease = WriterLease(etcd_server.endpoints, prefix, "eu", holder="agent-eu", ttl_s=2)
    try:
        assert not lease.allowed() and lease_holder(gw, prefix, "eu") is None  # nothing before the grant
        assert lease.renew_once() and lease.allowed()
        assert lease_holder(gw, prefix, "eu")["holder"] == "agent-eu"
        # no more renewals (as when the region is cut off): the writer must stop first...
        fenced_after = _wait(lambda: not lease.allowed(), timeout=5)
        assert fenced_after <= 2 - margin_for(2) + 0.1
        assert lease_holder(gw, prefix, "eu") is not None, "the key must outlive the writer's permission"
        # ...then etcd lets the key go, and the control plane may promote
        _wait(lambda: lease_holder(gw, prefix, "eu") is None, timeout=10)
        assert not lease.state().held
        # the region is back: the expired lease is replaced by a new one
        assert lease.renew_once() and lease.allowed() and lease_holder(gw, prefix, "eu") is not None
    finally:
        lease.stop()
        gw.close()
    gw = EtcdGateway(etcd_server.endpoints)
    assert lease_holder(gw, prefix, "eu") is None  # stopping gave it up at once
    gw.close()


def test_no_store_answering_means_no_writer():
    lease = WriterLease(["http://127.0.0.1:9"], "/p/", "eu", holder="agent-eu", ttl_s=3)
    try:
        assert not lease.renew_once() and not lease.allowed()
        assert lease.state().last_error and "127.0.0.1:9" in lease.state().last_error
    finally:
        lease.stop()
