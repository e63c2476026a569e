"""A lab of hosts on this machine, for tests and drills: one network namespace per host (a
control host, one per region), joined by a bridge that lives in a namespace of its own, so that
nothing is added to the machine's own interfaces. Each host gets one address on the lab's
subnet and its own loopback; only addresses the lab created are ever used.

    pgcrdr lab up [--id ID] [--regions N] [--subnet K]   ->  prints the lab's topology file
    pgcrdr lab down [--id ID]
    pgcrdr drill partition REGION / heal REGION          (on a lab: the region's link set down/up)
    pgcrdr lab bandwidth HOST RATE                       (tc tbf on that host's link, both ways)

A partition sets the host's link down on the bridge side: its processes keep running and
clients inside the host still reach them; nothing outside it does. netem is not available on
these machines; tbf is, so a link can be capped but not delayed.

Planning is pure (``plan_lab``); ``lab_up``/``lab_down`` run ``ip``/``tc`` and need root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgcrdr.config import Settings
    from pgcrdr.topology import Topology

LAB_PREFIX = "pgl"  # namespace names: pgl-<id>-<host>; interface names stay within 15 characters
ID_RE = re.compile(r"^[a-z0-9]{1,6}$")


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class LabHost:
    name: str  # "ctl", "r0", "r1", ...
    netns: str
    address: str
    bridge_port: str  # its link's end in the bridge namespace


@dataclass(frozen=True)
class Lab:
    lab_id: str
    subnet: str  # e.g. 10.249.7.0/24
    bridge_ns: str
    hosts: tuple[LabHost, ...]

    @property
    def region_hosts(self) -> list[LabHost]:
        return [h for h in self.hosts if h.name.startswith("r")]

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"the lab {self.lab_id} has no host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")


def plan_lab(lab_id: str, regions: int = 2, subnet: int = 7, witness: bool = False) -> Lab:
    """The lab's namespaces and addresses: 10.249.<subnet>.10 for the control host, .11, .12, ...
    for the regions' hosts, then the witness host ``w`` (``witness``: it runs a member of the
    global etcd only, so that losing one region leaves the store a quorum)."""
    if not ID_RE.match(lab_id):
        raise LabError(f"lab id {lab_id[:20]!r} must be 1 to 6 lower-case letters or digits")
    if not 1 <= regions <= 8:
        raise LabError("a lab has 1 to 8 region hosts")
    if not 1 <= subnet <= 254:
        raise LabError("--subnet must be 1 to 254 (the lab uses 10.249.SUBNET.0/24)")
    net = f"10.249.{subnet}"
    names = ["ctl"] + [f"r{i}" for i in range(regions)] + (["w"] if witness else [])
    hosts = tuple(LabHost(name=n, netns=f"{LAB_PREFIX}-{lab_id}-{n}", address=f"{net}.{10 + i}",
                          bridge_port=f"p{lab_id}{n}")
                  for i, n in enumerate(names))
    return Lab(lab_id=lab_id, subnet=f"{net}.0/24", bridge_ns=f"{LAB_PREFIX}-{lab_id}-br", hosts=hosts)


def up_commands(lab: Lab) -> list[list[str]]:
    """The ``ip`` commands that build the lab (pure: tests read them)."""
    br = lab.bridge_ns
    cmds = [["ip", "netns", "add", br], ["ip", "-n", br, "link", "set", "lo", "up"],
            ["ip", "-n", br, "link", "add", "br0", "type", "bridge"], ["ip", "-n", br, "link", "set", "br0", "up"]]
    for h in lab.hosts:
        cmds += [
            ["ip", "netns", "add", h.netns],
            ["ip", "-n", h.netns, "link", "set", "lo", "up"],
            # the pair is created with each end already in its namespace: nothing in the root one
            ["ip", "link", "add", "eth0", "netns", h.netns, "type", "veth", "peer", "name", h.bridge_port,
             "netns", br],
            ["ip", "-n", br, "link", "set", h.bridge_port, "master", "br0"],
            ["ip", "-n", br, "link", "set", h.bridge_port, "up"],
            ["ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0"],
            ["ip", "-n", h.netns, "link", "set", "eth0", "up"],
        ]
    return cmds


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def existing_namespaces(lab_id: str | None = None) -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    prefix = f"{LAB_PREFIX}-{lab_id}-" if lab_id else f"{LAB_PREFIX}-"
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0].startswith(prefix)]


def lab_up(lab: Lab) -> Lab:
    """Build the lab; on any failure, remove what was made and raise."""
    if existing_namespaces(lab.lab_id):
        raise LabError(f"a lab {lab.lab_id} exists already: `pgcrdr lab down --id {lab.lab_id}` first")
    try:
        for cmd in up_commands(lab):
            _run(cmd)
    except Exception:
        lab_down(lab.lab_id)
        raise
    return lab


def lab_down(lab_id: str) -> list[str]:
    """Remove every namespace of the lab (their links go with them). Returns the names removed."""
    if not ID_RE.match(lab_id):
        raise LabError(f"lab id {lab_id[:20]!r} must be 1 to 6 lower-case letters or digits")
    removed = []
    for ns in existing_namespaces(lab_id):
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    return removed


def partition(lab: Lab, host: str) -> None:
    """Cut ``host`` off: its link is set down on the bridge side; its processes run on."""
    _run(["ip", "-n", lab.bridge_ns, "link", "set", lab.host(host).bridge_port, "down"])


def heal(lab: Lab, host: str) -> None:
    _run(["ip", "-n", lab.bridge_ns, "link", "set", lab.host(host).bridge_port, "up"])


def bandwidth_commands(lab: Lab, host: str, rate: str | None) -> list[list[str]]:
    """tc tbf on both ends of ``host``'s link (None: remove the cap)."""
    h = lab.host(host)
    ends = [(lab.bridge_ns, h.bridge_port), (h.netns, "eth0")]
    if rate is None:
        return [["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"] for ns, dev in ends]
    if not re.match(r"^\d+(\.\d+)?(kbit|mbit|gbit)$", rate):
        raise LabError(f"rate {rate[:20]!r} must look like 200mbit, 1gbit or 500kbit")
    return [["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
             "burst", "256kb", "latency", "50ms"] for ns, dev in ends]


def cap_bandwidth(lab: Lab, host: str, rate: str | None) -> None:
    for cmd in bandwidth_commands(lab, host, rate):
        _run(cmd, check=rate is not None)


def link_bytes(lab: Lab, host: str) -> tuple[int, int]:
    """Bytes received and sent so far on ``host``'s link (its eth0): what crossed between it and
    the other hosts, whatever the process."""
    out = _run(["ip", "-n", lab.host(host).netns, "-j", "-s", "link", "show", "eth0"]).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


def exec_argv(lab: Lab, host: str, argv: list[str]) -> list[str]:
    """``argv`` run inside ``host``."""
    return ["ip", "netns", "exec", lab.host(host).netns, *argv]


def topology_text(lab: Lab, cloud_names: list[str] | None = None, api_port: int = 25000,
                  replicas: tuple[str, ...] = ("ctl",), store_hosts: tuple[str, ...] = ()) -> str:
    """The topology file of a deployment on this lab: a control-plane replica on each host of
    ``replicas`` (default: the control host), one region per region host, and a member of the
    global etcd on each host of ``store_hosts`` (none: one replica keeps its state in SQLite)."""
    regions = lab.region_hosts
    names = cloud_names or [f"lab-region-{i}" for i in range(len(regions))]
    if len(names) != len(regions):
        raise LabError(f"{len(names)} cloud names for {len(regions)} region hosts")
    out = [f"# lab {lab.lab_id}: {lab.subnet}", "[control]", f"api_port = {api_port}", ""]
    for host in replicas:
        out += ["[[control.hosts]]", f'name = "{lab.host(host).netns}"', f'address = "{lab.host(host).address}"', ""]
    for host in store_hosts:
        out += ["[[control.store_members]]", f'name = "{host}"', f'address = "{lab.host(host).address}"', ""]
    for name, h in zip(names, regions, strict=True):
        out += ["[[regions]]", f'cloud_name = "{name}"', f'description = "Lab host {h.name}"',
                f'host = "{h.address}"', ""]
    return "\n".join(out)


def _copy_bundle(bundle: Path, dest: Path) -> None:
    """A bundle of ``pgcrdr secrets`` copied as a user copies it to a host: modes kept, 0700 dir."""
    from pgcrdr.security.files import write_secret

    for f in sorted(bundle.iterdir()):
        write_secret(dest / f.name, f.read_bytes(), f.stat().st_mode & 0o777)
    dest.chmod(0o700)


# --- entering a host from this process ---------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns failed: {os.strerror(err)}")


@contextlib.contextmanager
def in_host(lab: Lab, host: str) -> Iterator[None]:
    """Run the calling thread inside ``host``'s network (only this thread: namespaces are per
    thread). Sockets opened meanwhile stay in that host; threads and processes started meanwhile
    are born there. The thread's own network is restored on exit."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{lab.host(host).netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


# --- a deployment on the lab: control plane and agents, each inside its host --------------------

@dataclass
class LabDeployment:
    """pgcrdr deployed on a lab as it would be on real hosts: a topology file, the deployment's
    secrets (`pgcrdr secrets`), each region's bundle copied to its host's home, an agent inside
    each region host, a control-plane replica inside each host of ``replicas`` and, with
    ``store_hosts``, a member of the global etcd inside each of those hosts. Each part has its own
    ``PGCRDR_HOME`` under ``root`` (:meth:`home`); every process is recorded by PID there and
    stopped by ``stop`` (also after a failed start). The default is one replica on the control
    host, on SQLite."""

    lab: Lab
    root: Path
    cloud_names: list[str]
    api_port: int = 25000
    replicas: tuple[str, ...] = ("ctl",)
    store_hosts: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)  # settings passed to every part
    # settings of each replica's own (host -> environment), e.g. a crash drill for one of them
    replica_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def existing(cls, lab_id: str, root: Path) -> LabDeployment | None:
        """The deployment ``start`` left under ``root`` (None: there is none)."""
        from pgcrdr.topology import load_topology

        path = root / "topology.toml"
        if not path.exists():
            return None
        topo = load_topology(path)
        subnet = int(topo.control_hosts[0].address.split(".")[2])
        store_hosts = tuple(m.name for m in topo.store_members)
        replicas = tuple(h.name.rsplit("-", 1)[-1] for h in topo.control_hosts)
        lab = plan_lab(lab_id, regions=len(topo.regions), subnet=subnet, witness="w" in store_hosts + replicas)
        return cls(lab, root, [r.cloud_name for r in topo.regions], topo.api_port, replicas, store_hosts)

    @property
    def topology_path(self) -> Path:
        return self.root / "topology.toml"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def home(self, host: str, part: str = "") -> Path:
        """The home of a part: ``root/<host>`` for a region's agent and the control host's replica
        (as before), ``root/<host>-control`` for a replica on another host, ``root/<host>-store``
        for a member of the global etcd."""
        if part == "control" and host != "ctl":
            return self.root / f"{host}-control"
        if part == "store":
            return self.root / f"{host}-store"
        return self.root / host

    def region_hosts(self) -> list[tuple[str, str]]:
        """(host, cloud name) of every region host."""
        return list(zip([h.name for h in self.lab.region_hosts], self.cloud_names, strict=True))

    def settings(self, host: str) -> Settings:
        """The settings of the control-plane replica on ``host`` (``ctl`` is one even without a
        replica: the test thread's client view), else of the agent of the region host ``host``."""
        return self.replica_settings(host) if host == "ctl" or host in self.replicas else self.agent_settings(host)

    def replica_settings(self, host: str) -> Settings:
        from pgcrdr.config import Settings

        return Settings.from_topology(self._topology(), home=self.home(host, "control"), secrets=self.secrets_dir,
                                      control_host=self.lab.host(host).netns if host in self.replicas else None)

    def agent_settings(self, host: str) -> Settings:
        from pgcrdr.config import Settings

        return Settings.from_topology(self._topology(), home=self.home(host), region=dict(self.region_hosts())[host])

    def _topology(self) -> Topology:
        from pgcrdr.topology import load_topology

        return load_topology(self.topology_path)

    def prepare(self) -> None:
        """Topology, secrets and homes (idempotent)."""
        from pgcrdr.security.deployment import ensure_deployment_secrets, member_bundle
        from pgcrdr.topology import load_topology

        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the node user traverses it to each region's home
        self.topology_path.write_text(topology_text(self.lab, self.cloud_names, self.api_port, self.replicas,
                                                    self.store_hosts))
        ensure_deployment_secrets(load_topology(self.topology_path), self.secrets_dir)
        homes = [self.home(h, "control") for h in self.replicas] + [self.home(h, "store") for h in self.store_hosts]
        for home in homes + [self.home("ctl")]:
            home.mkdir(exist_ok=True)
            home.chmod(0o755)
        for host, cloud in self.region_hosts():
            home = self.home(host)
            home.mkdir(exist_ok=True)
            home.chmod(0o755)
            # "copy the region's bundle to its host": the files the agent reads, nothing else
            _copy_bundle(self.secrets_dir / cloud, home / "secrets")
        for host in self.store_hosts:
            # and each member's TLS bundle to its host
            bundle = member_bundle(self.secrets_dir, host)
            if bundle.is_dir():
                _copy_bundle(bundle, self.home(host, "store") / "secrets")

    def _spawn(self, host: str, home: Path, name: str, argv: list[str],
               env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        from pgcrdr.config import Settings
        from pgcrdr.platform import pid_path

        settings = Settings.from_env(home=home)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(settings.run_dir / f"{name}.log", "ab")
        # the part's place comes from the topology and its home; other settings pass through
        env = {k: v for k, v in os.environ.items()
               if k not in ("PGCRDR_HOME", "PGCRDR_PORT_BASE", "PGCRDR_PORT_OFFSET", "PGCRDR_REGIONS")}
        env.update(self.extra_env)
        env.update(env_extra or {})
        env["PGCRDR_HOME"] = str(home)
        proc = subprocess.Popen(exec_argv(self.lab, host, argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        log.close()
        pid_path(settings, name).write_text(str(proc.pid))  # `ip netns exec` execs: this is the part's pid
        return proc

    def start(self, timeout: float = 120.0) -> None:
        """Start every part and wait until every replica's API answers and every agent is healthy."""
        self.prepare()
        try:
            for host in self.store_hosts:
                self.start_store_member(host)
            self.wait_store(timeout)
            for host, _ in self.region_hosts():
                self.start_agent(host)
            for host in self.replicas:
                self.start_replica(host)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def start_store_member(self, host: str) -> None:
        from pgcrdr.platform import STORE_MEMBER_PID

        self._spawn(host, self.home(host, "store"), STORE_MEMBER_PID,
                    [sys.executable, "-m", "pgcrdr", "store-member", "--topology", str(self.topology_path),
                     "--name", host, "--home", str(self.home(host, "store"))])

    def wait_store(self, timeout: float) -> None:
        """Until every member of the global etcd says it is healthy (it has a leader): the parts
        that use it refuse to start without an answer."""
        import httpx

        from pgcrdr.security.deployment import store_client_tls

        tls = store_client_tls(self.secrets_dir)
        deadline = time.monotonic() + timeout
        with in_host(self.lab, "ctl"):
            for member in self._topology().store_members:
                verify = tls.context() if member.tls else True
                while True:
                    try:
                        r = httpx.get(member.client_url + "/health", timeout=1, trust_env=False, verify=verify)
                        if r.status_code == 200 and r.json().get("health") == "true":
                            break
                        last = r.text[:200]
                    except (httpx.HTTPError, ValueError) as exc:
                        last = str(exc)
                    if time.monotonic() > deadline:
                        raise LabError(f"store member {member.name} not healthy after {timeout:.0f}s: {last}; "
                                       f"see {self.home(member.name, 'store')}/run/store-member.log")
                    time.sleep(0.2)

    def start_replica(self, host: str) -> None:
        """Start the control-plane replica of ``host`` (again, after a drill killed it), with its
        own settings from ``replica_env``."""
        home = self.home(host, "control")
        self._spawn(host, home, "pgcrdr",
                    [sys.executable, "-m", "pgcrdr", "controlplane", "--topology", str(self.topology_path),
                     "--home", str(home), "--secrets", str(self.secrets_dir),
                     "--control-host", self.lab.host(host).netns], self.replica_env.get(host))

    def start_agent(self, host: str) -> None:
        """Start the agent of a region host (again, after a drill killed its region)."""
        cloud = dict(self.region_hosts())[host]
        self._spawn(host, self.home(host), f"agent-{cloud}",
                    [sys.executable, "-m", "pgcrdr", "agent", "--region", cloud, "--topology",
                     str(self.topology_path), "--home", str(self.home(host))])

    def replica_pid(self, host: str) -> int | None:
        from pgcrdr.platform import pid_path, read_pid

        return read_pid(pid_path(self.replica_settings(host), "pgcrdr"))

    def wait_ready(self, timeout: float) -> None:
        import httpx

        from pgcrdr.agentapi.client import AgentClient, AgentError
        from pgcrdr.config import Settings
        from pgcrdr.platform import pid_path, read_pid

        ctl = self.replica_settings(self.replicas[0])
        token = (self.secrets_dir / "agent-token").read_text().strip()
        deadline = time.monotonic() + timeout
        last = "nothing answered yet"
        with in_host(self.lab, "ctl"):
            while time.monotonic() < deadline:
                dead = [f"{host} ({name})" for host, home, name in self._parts()
                        if read_pid(pid_path(Settings.from_env(home=home), name)) is None]
                if dead:
                    raise LabError(f"lab part(s) exited: {', '.join(dead)}; see their logs under {self.root}/*/run")
                healthy = []
                for region in ctl.regions:
                    client = AgentClient(ctl.agent_url(region), token, timeout=2, verify=ctl.agent_verify)
                    try:
                        healthy.append(client.health().etcd_healthy)
                    except AgentError as exc:
                        last = str(exc)
                        healthy.append(False)
                    finally:
                        client.close()
                api = True
                for host in self.replicas:
                    url = self.replica_settings(host).api_url
                    try:
                        api = api and httpx.get(url + "/v1/clouds", timeout=2).status_code == 200
                    except httpx.HTTPError as exc:
                        last, api = f"control plane on {host}: {exc}", False
                if api and all(healthy):
                    return
                time.sleep(0.5)
        raise LabError(f"the lab deployment was not ready after {timeout:.0f}s: {last}")

    def _parts(self) -> list[tuple[str, Path, str]]:
        """(host, home, pid name) of every part, in the order they stop: replicas, agents, store."""
        return ([(host, self.home(host, "control"), "pgcrdr") for host in self.replicas]
                + [(host, self.home(host), f"agent-{cloud}") for host, cloud in self.region_hosts()]
                + [(host, self.home(host, "store"), "store-member") for host in self.store_hosts])

    def stop(self) -> list[str]:
        """Stop every part by PID (replicas first, the global etcd last), then anything left of
        their homes."""
        from pgcrdr.config import Settings
        from pgcrdr.platform import stop_everything

        said: list[str] = []
        if not self.topology_path.exists():
            return said
        for host in self.replicas:
            said += stop_everything(self.replica_settings(host))
        for host, _ in self.region_hosts():
            said += stop_everything(self.agent_settings(host))
        for host in self.store_hosts:
            said += stop_everything(Settings.from_env(home=self.home(host, "store")))
        return said

    def api_token(self) -> str:
        return (self.home(self.replicas[0], "control") / "control" / "api-token").read_text().strip()
