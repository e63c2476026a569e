"""The CRDR role-change table, row by row."""

from __future__ import annotations

import pytest

from pgcrdr.agentapi.models import ClusterStatus, Endpoint
from pgcrdr.controlplane.errors import Refused
from pgcrdr.controlplane.records import OperationRecord, ServiceRecord, ServiceUser
from pgcrdr.controlplane.transitions import NoChange, RoleChange, plan_role_change


def status(ready=True, standby=False):
    ep = Endpoint(host="127.0.0.1", port=1)
    return ClusterStatus(cluster="c", region="r", ready=ready, standby=standby, primary=ep, replica=ep)


def svc(name, kind, role, state="RUNNING", ready=True):
    return ServiceRecord(
        project="p", name=name, plan="startup-4", cloud="c", cluster=name, create_time="t", update_time="t",
        superuser_password="x", replication_password="x", rewind_password="x", tls_cert_pem="", tls_key_pem="",
        users=[ServiceUser(username="avnadmin", password="p", type="primary")],
        dr_kind=kind, dr_role=role, state=state,
        status=status(ready=ready, standby=(role == "passive")) if role != "failed" else None,
    )


PRI_ACTIVE = svc("pg", "primary", "active")
REC_PASSIVE = svc("pg-dr", "recovery", "passive")
PRI_FAILED = svc("pg", "primary", "failed", state="POWEROFF")
REC_ACTIVE = svc("pg-dr", "recovery", "active")
PRI_PASSIVE = svc("pg", "primary", "passive")


def refused(*args, **kw) -> Refused:
    with pytest.raises(Refused) as exc:
        plan_role_change(*args, **kw)
    return exc.value


def test_cycle_of_the_docs():
    assert plan_role_change(PRI_ACTIVE, REC_PASSIVE, "failed").kind == "failover"
    assert plan_role_change(PRI_FAILED, REC_ACTIVE, "passive").kind == "failback_restore"
    assert plan_role_change(PRI_PASSIVE, REC_ACTIVE, "active", last_kind="failback_restore").kind == \
        "failback_promote"
    assert plan_role_change(REC_PASSIVE, PRI_ACTIVE, "active").kind == "switchover"
    change = plan_role_change(PRI_PASSIVE, REC_ACTIVE, "active", last_kind="switchover")
    assert isinstance(change, RoleChange) and change.kind == "switchback"
    assert (change.source, change.target) == ("pg-dr", "pg")
    # the recovery stepping down is the same planned move
    assert plan_role_change(REC_ACTIVE, PRI_PASSIVE, "passive").target == "pg"


def test_same_role_is_no_change():
    assert isinstance(plan_role_change(PRI_ACTIVE, REC_PASSIVE, "active"), NoChange)


@pytest.mark.parametrize(
    "s,peer,role,status_code,fragment",
    [
        (REC_PASSIVE, PRI_ACTIVE, "failed", 400, "Only the primary service can be marked failed"),
        (PRI_PASSIVE, REC_ACTIVE, "failed", 409, "nothing to fail over"),
        (PRI_FAILED, REC_ACTIVE, "active", 409, "restore it first"),
        (PRI_ACTIVE, REC_PASSIVE, "passive", 400, "set pg-dr to active"),
        (svc("pg", "primary", "passive", state="REBUILDING", ready=False), REC_ACTIVE, "active", 409,
         "still rebuilding"),
        (svc("pg-dr", "recovery", "passive", ready=False), PRI_ACTIVE, "active", 409, "not streaming"),
        (REC_ACTIVE, PRI_FAILED, "passive", 409, "restore it first"),
        (PRI_ACTIVE, REC_PASSIVE, "boss", 400, "Invalid disaster_recovery_role"),
    ],
)
def test_illegal_transitions_say_why_and_what_to_do(s, peer, role, status_code, fragment):
    exc = refused(s, peer, role)
    assert exc.status == status_code and fragment in exc.message


def test_no_peer_and_running_operation():
    alone = svc("solo", None, None)
    assert "no disaster recovery peer" in refused(alone, None, "failed").message
    op = OperationRecord(operation_id="o", project="p", pair="pg", kind="switchover", service="pg-dr",
                         requested_role="active", source="pg", target="pg-dr", create_time="t")
    exc = refused(PRI_ACTIVE, REC_PASSIVE, "failed", running=op)
    assert exc.status == 409 and "already running" in exc.message


def test_failover_refused_while_recovery_still_rebuilding():
    rebuilding = svc("pg-dr", "recovery", "passive", state="REBUILDING", ready=False)
    assert "still being built" in refused(PRI_ACTIVE, rebuilding, "failed").message


# --- the table as a whole: every state reachable, every state can return, every refusal a remedy --

# What each operation leaves behind (crdr.md, "The cycle"): (primary role, recovery role).
AFTER = {
    "failover": ("failed", "active"),
    "failback_restore": ("passive", "active"),
    "failback_promote": ("active", "passive"),
    "switchover": ("passive", "active"),
    "switchback": ("active", "passive"),
}
STATE_OF = {"active": "RUNNING", "passive": "RUNNING", "failed": "POWEROFF"}
REMEDY_WORDS = ("set ", "wait", "retry", "create", "restore", "use ", "delete", "fence", "bring")


def _pair(pri_role: str, rec_role: str, rec_state: str = "RUNNING") -> tuple[ServiceRecord, ServiceRecord]:
    return (svc("pg", "primary", pri_role, state=STATE_OF[pri_role]),
            svc("pg-dr", "recovery", rec_role, state=rec_state if rec_role != "failed" else "POWEROFF"))


def _moves(roles: tuple[str, str], last_kind: str | None) -> list[tuple[str, str, tuple[str, str]]]:
    """Every accepted request from ``roles``: (service asked, role asked, roles after)."""
    pri, rec = _pair(*roles)
    out = []
    for who, me, peer in (("pg", pri, rec), ("pg-dr", rec, pri)):
        for role in ("active", "passive", "failed"):
            try:
                change = plan_role_change(me, peer, role, last_kind=last_kind)
            except Refused:
                continue
            if isinstance(change, RoleChange):
                out.append((who, role, AFTER[change.kind]))
    return out


def test_every_documented_state_is_reachable_and_can_return_to_the_start():
    start = ("active", "passive")
    seen, todo = {start}, [start]
    while todo:
        roles = todo.pop()
        for last in (None, "failback_restore"):
            for _, _, after in _moves(roles, last):
                if after not in seen:
                    seen.add(after)
                    todo.append(after)
    assert seen == {("active", "passive"), ("failed", "active"), ("passive", "active")}
    for roles in seen - {start}:  # a way back to the primary writing, from every state
        frontier, back = {roles}, False
        for _ in range(3):
            frontier = {after for r in frontier for last in (None, "failback_restore")
                        for _, _, after in _moves(r, last)}
            back = back or start in frontier
        assert back, f"no way back from {roles}"


# every (primary role, recovery role) a pair can be in, with the recovery RUNNING or REBUILDING
PAIR_STATES = [(p_, r, st) for p_, r in (("active", "passive"), ("failed", "active"), ("passive", "active"))
               for st in ("RUNNING", "REBUILDING")]


@pytest.mark.parametrize("pri_role,rec_role,rec_state", PAIR_STATES)
@pytest.mark.parametrize("asker", ["pg", "pg-dr"])
@pytest.mark.parametrize("role", ["active", "passive", "failed", "primary"])
def test_every_refusal_says_what_to_do_instead(pri_role, rec_role, rec_state, asker, role):
    pri, rec = _pair(pri_role, rec_role, rec_state)
    me, peer = (pri, rec) if asker == "pg" else (rec, pri)
    try:
        plan_role_change(me, peer, role)
    except Refused as exc:
        assert exc.status in (400, 409)
        assert any(w in exc.message.lower() for w in REMEDY_WORDS), exc.message
