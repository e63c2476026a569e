"""Service operations behind the API: validate at the edge, record intent, return at once.

The reconciler (``pgcrdr.controlplane.reconciler``) carries the recorded intent out in the
regions. A refused request raises :class:`Refused` and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from typing import Any

from pgcrdr.config import Settings
from pgcrdr.controlplane.catalog import DEFAULT_PG_VERSION, PG_VERSIONS, PLANS, SERVICE_TYPES
from pgcrdr.controlplane.errors import Refused, clip, clip_repr, not_found_project, not_found_service
from pgcrdr.agentapi.times import format_time
from pgcrdr.controlplane.forks import FORK_KEYS, fork_target_time
from pgcrdr.controlplane.records import ForkSource, ProjectRecord, ServiceRecord, ServiceUser
from pgcrdr.controlplane.store import Store, Tx
from pgcrdr.endpoint.render import allocate_ports
from pgcrdr.security.tls import CertPair, issue_server_cert, make_ca
from pgcrdr.security.tokens import new_token

# Applied with fullmatch (a "$" alone would let a trailing newline in); also the patterns of the
# OpenAPI spec (api/schemas.py), so ASCII classes only.
SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}[a-z0-9]$")
PROJECT_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,63}$")
DB_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{0,62}$")
USER_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.-]{0,62}$")
RESERVED_ROLES = {"postgres", "replicator", "rewind_user", "pg_monitor", "public"}
RESERVED_DBS = {"postgres", "template0", "template1"}
DOWS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
TIME_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$")


def now_rfc3339(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_password() -> str:
    return new_token(18)


def cluster_id(project: str, service: str) -> str:
    """Region-unique cluster id: the service name plus a short hash of project/service."""
    digest = hashlib.sha1(f"{project}/{service}".encode()).hexdigest()[:6]
    return f"{service[:40].rstrip('-')}-{digest}"


DEFAULT_MAX_CONNECTIONS = 100  # pgcrdr.agent.patroni.DCS_PARAMETERS


def _check_user_config(uc: Any) -> dict:
    if uc is None:
        return {}
    if not isinstance(uc, dict):
        raise Refused(400, "user_config must be a JSON object")
    known = set(SERVICE_TYPES["pg"]["user_config_schema"]["properties"])
    unknown = sorted(set(uc) - known)
    if unknown:
        raise Refused(
            400,
            f"Invalid user_config: unknown key(s) {clip(', '.join(unknown))}; known keys: {', '.join(sorted(known))}",
        )
    uc = dict(uc)
    if isinstance(uc.get("pg_version"), float) and uc["pg_version"].is_integer():
        uc["pg_version"] = int(uc["pg_version"])  # the JSON number 15.0 is 15
    if "pg_version" in uc and str(uc["pg_version"]) not in PG_VERSIONS:
        raise Refused(
            400,
            f"Invalid user_config: pg_version {clip(uc['pg_version'])} is not available; "
            f"available versions: {', '.join(PG_VERSIONS)}",
        )
    if "ip_filter" in uc and not (
        isinstance(uc["ip_filter"], list) and all(isinstance(x, str) for x in uc["ip_filter"])
    ):
        raise Refused(400, "Invalid user_config: ip_filter must be a list of strings")
    for key in ("service_to_fork_from", "project_to_fork_from"):
        if key in uc and not isinstance(uc[key], str):
            raise Refused(400, f"Invalid user_config: {key} must be a string (a name)")
    if "admin_username" in uc:
        name = uc["admin_username"]
        if not isinstance(name, str) or not USER_NAME_RE.fullmatch(name) or name in RESERVED_ROLES:
            raise Refused(
                400, f"Invalid user_config: admin_username {clip_repr(name)} is not a valid or allowed role name")
    pg = uc.get("pg")
    pg_out: dict[str, int] = {}
    if pg is not None:
        if not isinstance(pg, dict):
            raise Refused(400, "Invalid user_config: pg must be an object")
        props = SERVICE_TYPES["pg"]["user_config_schema"]["properties"]["pg"]["properties"]
        for k, v in pg.items():
            if k not in props:
                raise Refused(400, f"Invalid user_config: unknown pg setting {clip(k)}; known: {', '.join(props)}")
            lo, hi = props[k]["minimum"], props[k]["maximum"]
            if isinstance(v, float) and v.is_integer():
                v = int(v)  # 405.0 is the JSON integer 405; stored as 405 (Terraform decodes ints)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise Refused(400, f"Invalid user_config: pg.{k} must be an integer between {lo} and {hi}")
            if k == "max_connections" and v != DEFAULT_MAX_CONNECTIONS:
                # Patroni keeps it equal on every node and across a DR pair (a standby with fewer
                # connections than its source stops replaying): not changeable here yet.
                raise Refused(400, f"Invalid user_config: pg.max_connections is {DEFAULT_MAX_CONNECTIONS} on every "
                                   "pgcrdr plan and cannot be changed yet; leave it out or set it to "
                                   f"{DEFAULT_MAX_CONNECTIONS}")
            pg_out[k] = v
    out = dict(uc)
    if isinstance(pg, dict):
        out["pg"] = pg_out
    if "pg_version" in out:
        out["pg_version"] = str(out["pg_version"])
    return out


def _check_maintenance(m: Any) -> dict | None:
    if m is None:
        return None
    if not isinstance(m, dict):
        raise Refused(400, "maintenance must be an object with dow and time")
    out = {}
    if m.get("dow") is not None:
        if not isinstance(m["dow"], str) or m["dow"] not in DOWS:
            raise Refused(400, f"Invalid maintenance.dow {clip_repr(m['dow'])}; use one of {', '.join(sorted(DOWS))}")
        out["dow"] = m["dow"]
    if m.get("time") is not None:
        if not isinstance(m["time"], str) or not TIME_RE.fullmatch(m["time"]):
            raise Refused(400, f"Invalid maintenance.time {clip_repr(m['time'])}; use HH:MM:SS")
        out["time"] = m["time"]
    return out


def _apply_changes(cur: ServiceRecord, changes: dict[str, Any]) -> ServiceRecord | None:
    if not changes:
        return None
    data = cur.model_dump()
    data.update(changes)
    data["update_time"] = now_rfc3339()
    if any(k in changes for k in ("plan", "user_config", "powered")):
        data["generation"] = cur.generation + 1
    if "powered" in changes:
        data["state"] = "REBUILDING" if changes["powered"] else "POWEROFF"
        data["ever_ready"] = False
    return ServiceRecord.model_validate(data)


class ServiceManager:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings

    # projects ---------------------------------------------------------------------------
    def project(self, name: str) -> ProjectRecord:
        p = self.store.get_project(name)
        if p is None:
            raise not_found_project(name)
        return p

    def create_project(self, name: object) -> ProjectRecord:
        if not isinstance(name, str) or not PROJECT_NAME_RE.fullmatch(name):
            raise Refused(400, f"Invalid project name {clip_repr(name)}: use 1-63 letters, digits, '-' or '_'")
        ca = make_ca(f"pgcrdr project CA {name}")
        rec = ProjectRecord(
            name=name,
            create_time=now_rfc3339(),
            ca_cert_pem=ca.cert_pem,
            ca_key_pem=ca.key_pem,
            default_cloud=self.settings.regions[0].cloud_name,
        )
        if not self.store.add_project(rec):
            raise Refused(409, f"Project {name} already exists")
        return rec

    # services ---------------------------------------------------------------------------
    def service(self, project: str, name: str) -> ServiceRecord:
        self.project(project)
        svc = self.store.get_service(project, name)
        if svc is None or svc.deleting:
            raise not_found_service(name)
        return svc

    def list_services(self, project: str) -> list[ServiceRecord]:
        self.project(project)
        return [s for s in self.store.list_services(project) if not s.deleting]

    def _check_plan(self, plan: Any) -> str:
        if not isinstance(plan, str) or plan not in PLANS:
            raise Refused(
                400, f"Plan {clip_repr(plan)} is not available for service type pg; available plans: {', '.join(PLANS)}"
            )
        return plan

    def _check_cloud(self, cloud: Any) -> str:
        names = [r.cloud_name for r in self.settings.regions]
        if not isinstance(cloud, str) or cloud not in names:
            raise Refused(400, f"Cloud {clip_repr(cloud)} is not available; available clouds: {', '.join(names)}")
        return cloud

    def create_service(self, project: str, body: dict[str, Any]) -> ServiceRecord:
        proj = self.project(project)
        name = body.get("service_name")
        if not isinstance(name, str) or not SERVICE_NAME_RE.fullmatch(name):
            raise Refused(
                400,
                f"Invalid service_name {clip_repr(name)}: use 2-64 lowercase letters, digits and '-', "
                "starting with a letter and not ending with '-'",
            )
        stype = body.get("service_type")
        if not isinstance(stype, str) or stype not in SERVICE_TYPES:
            raise Refused(400, f"Unknown service type {clip_repr(stype)}; available service types: pg")
        plan = self._check_plan(body.get("plan"))
        user_config = _check_user_config(body.get("user_config"))
        fork_src = self._fork_source_of(project, user_config)
        cloud = body.get("cloud")
        if cloud in (None, ""):
            cloud = fork_src.cloud if fork_src is not None else proj.default_cloud
        else:
            cloud = self._check_cloud(cloud)
        user_config.setdefault("pg_version", fork_src.user_config.get("pg_version", DEFAULT_PG_VERSION)
                               if fork_src is not None else DEFAULT_PG_VERSION)
        maintenance = _check_maintenance(body.get("maintenance")) or {}
        dr_source = self._dr_source_of(project, body.get("service_integrations"))
        if fork_src is not None and dr_source is not None:
            raise Refused(400, "A fork cannot be created as a disaster recovery copy; create the fork, then its "
                               "recovery copy (--disaster-recovery-copy-for)")
        if dr_source is not None and cloud == dr_source.cloud:
            raise Refused(
                400,
                f"A disaster recovery copy must run in another cloud than {dr_source.name} ({dr_source.cloud}); "
                f"choose one of: {', '.join(r.cloud_name for r in self.settings.regions if r.cloud_name != cloud)}",
            )
        tp = body.get("termination_protection", False)
        if not isinstance(tp, bool):
            raise Refused(400, "termination_protection must be true or false")
        existing = self.store.get_service(project, name)
        if existing is not None:
            if existing.deleting:
                raise Refused(409, f"Service {name} already exists and is being terminated; retry in a moment")
            raise Refused(409, f"Service {name} already exists")
        cert = self._server_cert(proj, name, cloud)
        ts = now_rfc3339()
        direct, pooled = self._free_endpoint_ports()
        admin = user_config.get("admin_username", "avnadmin")
        svc = ServiceRecord(
            project=project,
            name=name,
            plan=plan,
            cloud=cloud,
            cluster=cluster_id(project, name),
            create_time=ts,
            update_time=ts,
            user_config=user_config,
            termination_protection=tp,
            maintenance={"dow": "sunday", "time": "04:00:00", **maintenance},
            tags={str(k): str(v) for k, v in (body.get("tags") or {}).items()}
            if isinstance(body.get("tags"), dict)
            else {},
            users=[ServiceUser(username=admin, password=new_password(), type="primary")],
            superuser_password=new_password(),
            replication_password=new_password(),
            rewind_password=new_password(),
            tls_cert_pem=cert.cert_pem,
            tls_key_pem=cert.key_pem,
            endpoint_direct_port=direct,
            endpoint_pooled_port=pooled,
        )
        drill_of = self._drill_of(body.get("pgcrdr_drill_of"), fork_src)
        if drill_of is None and dr_source is not None:
            drill_of = dr_source.drill_of  # a drill fork's recovery copy belongs to the drill too
        svc = svc.model_copy(update={"drill_of": drill_of})
        if fork_src is not None:
            svc = self._as_fork(svc, fork_src, user_config.get("recovery_target_time"))
        if dr_source is not None:
            from pgcrdr.controlplane.crdr import attach_recovery

            return attach_recovery(self.store, svc, dr_source.name)
        if not self.store.add_service(svc):
            raise Refused(409, f"Service {name} already exists")
        return svc

    @staticmethod
    def _drill_of(value: Any, fork_src: ServiceRecord | None) -> str | None:
        """``pgcrdr_drill_of``: the production pair a drill's fork rehearses; it must be the
        service the new one is forked from, and the primary of a pair."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise Refused(400, "pgcrdr_drill_of must be the name of the pair's primary service")
        if fork_src is None or fork_src.name != value:
            raise Refused(400, f"pgcrdr_drill_of={clip_repr(value)} goes with a fork of that service "
                               f"(user_config service_to_fork_from={clip(value)})")
        if fork_src.dr_kind != "primary":
            raise Refused(400, f"{fork_src.name} is not the primary service of a disaster recovery pair: "
                               "there is no pair to rehearse")
        return value

    def _fork_source_of(self, project: str, user_config: dict[str, Any]) -> ServiceRecord | None:
        """The service named by ``service_to_fork_from`` (in ``project_to_fork_from``, default
        this project), or None when the new service is not a fork."""
        name = user_config.get("service_to_fork_from")
        if name is None:
            if "recovery_target_time" in user_config or "project_to_fork_from" in user_config:
                raise Refused(400, "Invalid user_config: recovery_target_time and project_to_fork_from apply to a "
                                   "fork; add service_to_fork_from=SERVICE")
            return None
        src_project = user_config.get("project_to_fork_from") or project
        self.project(src_project)
        src = self.store.get_service(src_project, name)
        if src is None or src.deleting:
            raise not_found_service(name)
        return src

    def _as_fork(self, svc: ServiceRecord, src: ServiceRecord, requested_time: Any) -> ServiceRecord:
        """``svc`` made a fork of ``src``: restored from its backups to the checked time, in its
        cloud, with its PostgreSQL version and its roles (the data holds them, passwords included)."""
        if svc.cloud != src.cloud:
            raise Refused(
                400, f"A fork is created in the cloud of the service it is forked from ({src.name}: {src.cloud}): "
                     "its backups are in that region's repository, and restoring them in another region is not "
                     f"supported yet. Create the fork with --cloud {src.cloud} (or without --cloud), then give it "
                     "a disaster recovery copy in another cloud if needed")
        version = src.user_config.get("pg_version", DEFAULT_PG_VERSION)
        if svc.user_config["pg_version"] != version:
            raise Refused(400, f"A fork runs the PostgreSQL version of {src.name} ({version}); leave pg_version out")
        if svc.user_config.get("admin_username", src.primary_user.username) != src.primary_user.username:
            raise Refused(400, f"A fork has the roles of {src.name} (admin user {src.primary_user.username}); "
                               "leave admin_username out")
        target = fork_target_time(src, requested_time, dt.datetime.now(dt.timezone.utc))
        fork = ForkSource(project=src.project, service=src.name, cluster=src.cluster, target_time=format_time(target))
        return svc.model_copy(update={
            "fork": fork, "users": [u.model_copy() for u in src.users], "databases": list(src.databases),
            "superuser_password": src.superuser_password, "replication_password": src.replication_password,
            "rewind_password": src.rewind_password,
        })

    def _dr_source_of(self, project: str, items: Any) -> ServiceRecord | None:
        """The primary named by a ``disaster_recovery`` item of ``service_integrations``, validated."""
        if items is None:
            return None
        if not isinstance(items, list):
            raise Refused(400, "service_integrations must be a list")
        source = None
        for integ in items:
            itype = integ.get("integration_type") if isinstance(integ, dict) else None
            if itype != "disaster_recovery":
                raise Refused(
                    400,
                    f"Integration type {clip_repr(itype)} is not supported at service creation; use disaster_recovery",
                )
            if source is not None:
                raise Refused(400, "Only one disaster_recovery integration can be given")
            src = integ.get("source_service")
            if not isinstance(src, str):
                raise Refused(400, "A disaster_recovery integration needs source_service (the primary service)")
            source = self.store.get_service(project, src)
            if source is None or source.deleting:
                raise not_found_service(src)
            if source.dr_peer is not None:
                raise Refused(
                    409, f"Service {src} already has a disaster recovery peer ({source.dr_peer}); "
                    "a pair has two services"
                )
            if not source.powered:
                raise Refused(409, f"Service {src} is powered off; power it on before creating its recovery copy")
        return source

    def _free_endpoint_ports(self) -> tuple[int, int]:
        used: set[int] = set()
        for s in self.store.list_services():
            used.update(p for p in (s.endpoint_direct_port, s.endpoint_pooled_port) if p)
        try:
            return allocate_ports(used, *self.settings.endpoint_port_range)
        except ValueError:
            raise Refused(409, "No free ports left for a new Service URI; terminate unused services") from None

    def _server_cert(self, proj: ProjectRecord, name: str, cloud: str) -> CertPair:
        """The nodes' certificate: valid for the Service URI's addresses (every control host's:
        each replica's endpoints pass TLS through) and for the region host's (replication and
        failback copies from another region reach the nodes there), so clients can verify it with
        the project CA."""
        ca = CertPair(proj.ca_cert_pem, proj.ca_key_pem)
        region = self.settings.region(cloud)
        host = region.host if region is not None else None
        addresses = list(dict.fromkeys(a for a in (self.settings.host, *self.settings.control_addresses, host) if a))
        return issue_server_cert(ca, [*addresses, "localhost", f"{name}-{proj.name}.pgcrdr.local"])

    def update_service(self, project: str, name: str, body: dict[str, Any]) -> ServiceRecord:
        self.service(project, name)
        out = self.store.update_service(project, name, self.service_change(body))
        if out is None:
            raise not_found_service(name)
        return out

    def service_change(self, body: dict[str, Any]) -> Callable[[ServiceRecord], ServiceRecord | None]:
        """What a ``PUT service`` body does to the stored record, as a function for a store
        transaction: it validates against the record it is given (raising :class:`Refused`, so the
        transaction writes nothing) and returns the new record, or None when nothing changes.
        Used alone, or together with a role change in one transaction (``crdr.update_and_request_role``)."""

        def change(svc: ServiceRecord) -> ServiceRecord | None:
            if svc.deleting:
                raise not_found_service(svc.name)
            return _apply_changes(svc, self._service_changes(svc, body))

        return change

    def _service_changes(self, svc: ServiceRecord, body: dict[str, Any]) -> dict[str, Any]:
        name = svc.name
        changes: dict[str, Any] = {}
        if body.get("plan") is not None:
            plan = self._check_plan(body["plan"])
            if PLANS[plan].node_count != PLANS[svc.plan].node_count:
                raise Refused(
                    400,
                    f"Changing plan from {svc.plan} ({PLANS[svc.plan].node_count} nodes) to {plan} "
                    f"({PLANS[plan].node_count} nodes) is not supported yet; choose a plan with "
                    f"{PLANS[svc.plan].node_count} node(s)",
                )
            changes["plan"] = plan
        if body.get("cloud") not in (None, "", svc.cloud):
            self._check_cloud(body["cloud"])
            raise Refused(
                400,
                f"Moving service {name} from {svc.cloud} to {clip(body['cloud'])} is not supported; "
                "create a disaster-recovery copy in the other cloud instead",
            )
        if "user_config" in body:
            uc = _check_user_config(body["user_config"])  # {} or null means "no change"
            fork_keys = [k for k in FORK_KEYS if k in uc and uc[k] != svc.user_config.get(k)]
            if fork_keys:
                raise Refused(400, f"Invalid user_config: {', '.join(fork_keys)} can only be set when a service is "
                                   "created (avn service create NEW -c service_to_fork_from=...)")
            if "pg_version" in uc and uc["pg_version"] != svc.user_config.get("pg_version"):
                raise Refused(400, "Major version upgrades are not supported yet")
            if "admin_username" in uc and uc["admin_username"] != svc.primary_user.username:
                raise Refused(400, "admin_username can only be set when the service is created")
            if uc:
                changes["user_config"] = {**svc.user_config, **uc}
        maint = _check_maintenance(body.get("maintenance"))
        if maint:
            changes["maintenance"] = {**svc.maintenance, **maint}
        if "termination_protection" in body and body["termination_protection"] is not None:
            if not isinstance(body["termination_protection"], bool):
                raise Refused(400, "termination_protection must be true or false")
            changes["termination_protection"] = body["termination_protection"]
        if "powered" in body and body["powered"] is not None:
            if not isinstance(body["powered"], bool):
                raise Refused(400, "powered must be true or false")
            if body["powered"] != svc.powered:
                if not body["powered"] and changes.get("termination_protection", svc.termination_protection):
                    raise Refused(
                        403,
                        f"Service {name} is protected against termination and shutdown; "
                        "disable termination protection first",
                    )
                changes["powered"] = body["powered"]
        if isinstance(body.get("tech_emails"), list):
            changes["tech_emails"] = [e for e in body["tech_emails"] if isinstance(e, dict)]
        return changes

    def delete_service(self, project: str, name: str) -> None:
        svc = self.service(project, name)
        if svc.termination_protection:
            raise Refused(
                403,
                f"Service {name} is protected against termination and shutdown; "
                "disable termination protection first",
            )

        if svc.dr_peer is None:
            self.store.update_service(
                project, name, lambda cur: cur.model_copy(update={"deleting": True, "update_time": now_rfc3339()}))
            return
        if svc.drill_of is not None:
            self._delete_drill_pair(svc)
            return
        # A pair member: only the passive side can go; the pair's Service URI and the writer stay.
        if svc.dr_role != "passive" or svc.dr_kind != "recovery":
            peer = self.store.get_service(project, svc.dr_peer)
            if svc.dr_kind == "recovery":  # the recovery service is the writer now
                how = (f"restore and promote {svc.dr_peer} first (disaster_recovery_role passive, then active), "
                       f"then terminate the passive recovery service {name}" if peer and peer.dr_role == "failed"
                       else f"switch back first (set {svc.dr_peer} to active), then terminate {name}")
            elif svc.dr_role == "failed":
                how = ("restore and promote this primary first (disaster_recovery_role passive, then active), "
                       f"then terminate the passive recovery service {svc.dr_peer}")
            elif svc.dr_role == "passive":
                how = f"switch back first (set {name} to active), then terminate {svc.dr_peer}"
            else:
                how = f"terminate the passive recovery service first ({svc.dr_peer})"
            raise Refused(
                409,
                f"Service {name} is the {svc.dr_role} {svc.dr_kind} service of a disaster recovery pair with "
                f"{svc.dr_peer}; {how}",
            )
        peer_name = svc.dr_peer

        def terminate(tx: Tx) -> None:
            running = tx.running_operation(project, peer_name)
            if running is not None and running.kind != "setup":
                raise Refused(409, f"A {running.kind} operation is running on the pair {peer_name}; "
                                   "retry once it finished")
            if running is not None:  # terminating a copy still being built cancels its setup
                tx.put_operation(running.model_copy(update={
                    "state": "failed", "finish_time": now_rfc3339(),
                    "message": f"cancelled: {name} was terminated"}))
            peer = tx.service(project, peer_name)
            if peer is not None:
                tx.put_service(peer.model_copy(update={
                    "dr_role": None, "dr_kind": None, "dr_peer": None, "permanent_slots": [],
                    "generation": peer.generation + 1, "update_time": now_rfc3339()}))
            for integ in tx.integrations(project):
                if name in (integ.source, integ.dest):
                    tx.delete_integration(project, integ.integration_id)
            cur = tx.service(project, name)
            assert cur is not None
            # The endpoint ports belong to the primary: the passive copy leaves them behind.
            tx.put_service(cur.model_copy(update={
                "deleting": True, "dr_peer": None, "endpoint_direct_port": None, "endpoint_pooled_port": None,
                "update_time": now_rfc3339()}))

        self.store.transaction(terminate)

    def _delete_drill_pair(self, svc: ServiceRecord) -> None:
        """A drill's fork pair goes as a whole whatever its roles (a drill interrupted between a
        failover and its failback must not need the failback to clean up), but never while an
        operation moves it: a half-applied step would be left to a deleted pair."""
        project, peer_name = svc.project, svc.dr_peer or ""

        def terminate(tx: Tx) -> None:
            peer = tx.service(project, peer_name)
            pair = svc.name if svc.dr_kind == "primary" else peer_name
            running = tx.running_operation(project, pair)
            if running is not None and running.kind != "setup":
                raise Refused(409, f"A {running.kind} operation is running on the drill's pair {pair}; "
                                   "retry once it finished")
            if running is not None:
                tx.put_operation(running.model_copy(update={
                    "state": "failed", "finish_time": now_rfc3339(),
                    "message": f"cancelled: the drill's pair {pair} was terminated"}))
            for integ in tx.integrations(project):
                if {integ.source, integ.dest} & {svc.name, peer_name}:
                    tx.delete_integration(project, integ.integration_id)
            for member in (svc, peer):
                if member is None:
                    continue
                cur = tx.service(project, member.name)
                if cur is None:
                    continue
                ports: dict[str, Any] = {} if cur.dr_kind == "primary" else {
                    "endpoint_direct_port": None, "endpoint_pooled_port": None}  # the primary's
                tx.put_service(cur.model_copy(update={
                    "deleting": True, "powered": False, "dr_role": None, "dr_peer": None,
                    "standby_of": None, "permanent_slots": [], "generation": cur.generation + 1,
                    "update_time": now_rfc3339(), **ports}))

        self.store.transaction(terminate)

    # databases and users ----------------------------------------------------------------
    def _change(self, project: str, name: str, fn: Any) -> ServiceRecord:
        out = self.store.update_service(project, name, fn)
        if out is None:
            raise not_found_service(name)
        return out

    def _require_powered(self, svc: ServiceRecord) -> None:
        if not svc.powered:
            raise Refused(409, f"Service {svc.name} is powered off; power it on first")
        if svc.dr_role in ("passive", "failed"):
            raise Refused(
                409,
                f"Service {svc.name} is {svc.dr_role} (a read-only copy); create it on the active service "
                f"{svc.dr_peer} and it is replicated here",
            )

    def _change_pair(self, project: str, name: str, add: Callable[[ServiceRecord], ServiceRecord],
                     mirror: Callable[[ServiceRecord], ServiceRecord]) -> None:
        """``add`` to the service and ``mirror`` to its DR peer, in one transaction: a refusal
        (``add`` raising) writes nothing on either side.

        Users and databases of a pair are one set: the passive copy gets them by replication, its
        record gets them here (so it has them when it becomes the writer). ``mirror`` brings the
        peer's record in line and never refuses: the active service's set is the reference."""
        def change(tx: Tx) -> None:
            cur = tx.service(project, name)
            if cur is None or cur.deleting:
                raise not_found_service(name)
            self._require_powered(cur)
            tx.put_service(add(cur))
            peer = tx.service(project, cur.dr_peer) if cur.dr_peer else None
            if peer is not None and not peer.deleting:
                tx.put_service(mirror(peer))

        self.store.transaction(change)

    def create_database(self, project: str, name: str, dbname: Any) -> None:
        svc = self.service(project, name)
        self._require_powered(svc)
        if not isinstance(dbname, str) or not DB_NAME_RE.fullmatch(dbname) or dbname in RESERVED_DBS:
            raise Refused(400, f"Invalid database name {clip_repr(dbname)}: use letters, digits, '_' or '-' (max 63)")

        def with_db(cur: ServiceRecord) -> ServiceRecord:
            dbs = cur.databases if dbname in cur.databases else [*cur.databases, dbname]
            return cur.model_copy(update={"databases": dbs, "generation": cur.generation + 1,
                                          "update_time": now_rfc3339()})

        def add(cur: ServiceRecord) -> ServiceRecord:
            if dbname in cur.databases:
                raise Refused(409, f"Database {dbname} already exists")
            return with_db(cur)

        self._change_pair(project, name, add, with_db)

    def create_user(self, project: str, name: str, username: Any) -> ServiceUser:
        svc = self.service(project, name)
        self._require_powered(svc)
        if not isinstance(username, str) or not USER_NAME_RE.fullmatch(username) or username in RESERVED_ROLES:
            raise Refused(400, f"Invalid or reserved username {clip_repr(username)}")
        user = ServiceUser(username=username, password=new_password(), type="normal")

        def with_user(cur: ServiceRecord) -> ServiceRecord:
            users = [u for u in cur.users if u.username != username]
            return cur.model_copy(update={"users": [*users, user], "generation": cur.generation + 1,
                                          "update_time": now_rfc3339()})

        def add(cur: ServiceRecord) -> ServiceRecord:
            if any(u.username == username for u in cur.users):
                raise Refused(409, f"User {username} already exists")
            return with_user(cur)

        self._change_pair(project, name, add, with_user)
        return user

    def user(self, project: str, name: str, username: str) -> ServiceUser:
        svc = self.service(project, name)
        for u in svc.users:
            if u.username == username:
                return u
        raise Refused(404, f"User {clip(username)} does not exist on service {clip(name)}")

    def set_tags(self, project: str, name: str, tags: Any) -> None:
        self.service(project, name)
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise Refused(400, "tags must be an object of string values")
        self._change(project, name, lambda cur: cur.model_copy(update={"tags": dict(tags)}))
