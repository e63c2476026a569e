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

STORE_CLIENT_PORT = 24379  # the lab's global etcd on the control host (+1: its peer port)
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

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"the lab {self.lab_id} has no host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")


def plan_lab(lab_id: str, regions: int = 2, subnet: int = 7) -> Lab:
    """The lab's namespaces and addresses: 10.249.<subnet>.10 for the control host, .11, .12, ...
    for the regions' hosts."""
    if not ID_RE.match(lab_id):
        raise LabError(f"lab id {lab_id[:20]!r} must be 1 to 6 lower-case letters or digits")
    if not 1 <= regions <= 8:
        raise LabError("a lab has 1 to 8 region hosts")
    if not 1 <= subnet <= 254:
        raise LabError("--subnet must be 1 to 254 (the lab uses 10.249.SUBNET.0/24)")
    net = f"10.249.{subnet}"
    names = ["ctl"] + [f"r{i}" for i in range(regions)]
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


def exec_argv(lab: Lab, host: str, argv: list[str]) -> list[str]:
    """``argv`` run inside ``host``."""
    return ["ip", "netns", "exec", lab.host(host).netns, *argv]


def topology_text(lab: Lab, cloud_names: list[str] | None = None, api_port: int = 25000,
                  store: list[str] | None = None) -> str:
    """The topology file of a deployment on this lab: the control host and one region per host
    (``store``: the global etcd's client URLs)."""
    regions = [h for h in lab.hosts if h.name != "ctl"]
    names = cloud_names or [f"lab-region-{i}" for i in range(len(regions))]
    if len(names) != len(regions):
        raise LabError(f"{len(names)} cloud names for {len(regions)} region hosts")
    ctl = lab.host("ctl")
    out = [f"# lab {lab.lab_id}: {lab.subnet}", "[control]", f"api_port = {api_port}",
           *([f"store = [{', '.join(repr(u).replace(chr(39), chr(34)) for u in store)}]"] if store else []), "",
           "[[control.hosts]]", f'name = "{ctl.netns}"', f'address = "{ctl.address}"', ""]
    for name, h in zip(names, regions, strict=True):
        out += ["[[regions]]", f'cloud_name = "{name}"', f'description = "Lab host {h.name}"',
                f'host = "{h.address}"', ""]
    return "\n".join(out)


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
    each region host and the control plane inside the control host, each with its own
    ``PGCRDR_HOME`` under ``root``. Every process is recorded by PID in its host's home and
    stopped by ``stop`` (also after a failed start)."""

    lab: Lab
    root: Path
    cloud_names: list[str]
    api_port: int = 25000
    # A one-member global etcd on the control host (the writer lease and the store need one);
    # a real deployment spreads it over the regions and a witness.
    store_on_ctl: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)  # settings passed to every part

    @classmethod
    def existing(cls, lab_id: str, root: Path) -> LabDeployment | None:
        """The deployment ``start`` left under ``root`` (None: there is none)."""
        from pgcrdr.topology import load_topology

        path = root / "topology.toml"
        if not path.exists():
            return None
        topo = load_topology(path)
        subnet = int(topo.control_hosts[0].address.split(".")[2])
        lab = plan_lab(lab_id, regions=len(topo.regions), subnet=subnet)
        return cls(lab, root, [r.cloud_name for r in topo.regions], topo.api_port)

    @property
    def topology_path(self) -> Path:
        return self.root / "topology.toml"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def home(self, host: str) -> Path:
        return self.root / host

    def region_hosts(self) -> list[tuple[str, str]]:
        """(host, cloud name) of every region host."""
        return list(zip([h.name for h in self.lab.hosts if h.name != "ctl"], self.cloud_names, strict=True))

    def settings(self, host: str) -> Settings:
        from pgcrdr.config import Settings
        from pgcrdr.topology import load_topology

        topo = load_topology(self.topology_path)
        if host == "ctl":
            return Settings.from_topology(topo, home=self.home(host), secrets=self.secrets_dir)
        cloud = dict(self.region_hosts())[host]
        return Settings.from_topology(topo, home=self.home(host), region=cloud)

    def prepare(self) -> None:
        """Topology, secrets and homes (idempotent)."""
        from pgcrdr.security.deployment import ensure_deployment_secrets
        from pgcrdr.security.files import write_secret
        from pgcrdr.topology import load_topology

        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the node user traverses it to each region's home
        self.topology_path.write_text(topology_text(self.lab, self.cloud_names, self.api_port,
                                                    [self.store_url] if self.store_on_ctl else None))
        ensure_deployment_secrets(load_topology(self.topology_path), self.secrets_dir)
        for host, cloud in [("ctl", None), *self.region_hosts()]:
            home = self.home(host)
            home.mkdir(exist_ok=True)
            home.chmod(0o755)
            if cloud is None:
                continue
            # "copy the region's bundle to its host": the files the agent reads, nothing else
            bundle = self.secrets_dir / cloud
            for f in sorted(bundle.iterdir()):
                write_secret(home / "secrets" / f.name, f.read_bytes(), f.stat().st_mode & 0o777)
            (home / "secrets").chmod(0o700)

    @property
    def store_url(self) -> str:
        return f"http://{self.lab.host('ctl').address}:{STORE_CLIENT_PORT}"

    def _start_store(self) -> None:
        data = self.home("ctl") / "store-etcd"
        peer = f"http://{self.lab.host('ctl').address}:{STORE_CLIENT_PORT + 1}"
        self._spawn("ctl", "store-etcd", [
            "/usr/bin/etcd", "--name", "store-ctl", "--data-dir", str(data), "--listen-client-urls", self.store_url,
            "--advertise-client-urls", self.store_url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls",
            peer, "--initial-cluster", f"store-ctl={peer}", "--initial-cluster-state", "new",
            "--auto-compaction-retention", "1", "--logger", "zap", "--log-outputs", "stderr"])

    def _spawn(self, host: str, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        from pgcrdr.platform import pid_path

        settings = self.settings(host)
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(settings.run_dir / f"{name}.log", "ab")
        # the part's place comes from the topology and its home; other settings pass through
        env = {k: v for k, v in os.environ.items()
               if k not in ("PGCRDR_HOME", "PGCRDR_PORT_BASE", "PGCRDR_PORT_OFFSET", "PGCRDR_REGIONS")}
        env.update(self.extra_env)
        env["PGCRDR_HOME"] = str(self.home(host))
        proc = subprocess.Popen(exec_argv(self.lab, host, argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        log.close()
        pid_path(settings, name).write_text(str(proc.pid))  # `ip netns exec` execs: this is the part's pid
        return proc

    def start(self, timeout: float = 120.0) -> None:
        """Start every part and wait until the API answers and every agent is healthy."""
        self.prepare()
        try:
            if self.store_on_ctl:
                self._start_store()
            for host, _ in self.region_hosts():
                self.start_agent(host)
            self._spawn("ctl", "pgcrdr", [sys.executable, "-m", "pgcrdr", "controlplane", "--topology",
                                          str(self.topology_path), "--home", str(self.home("ctl")), "--secrets",
                                          str(self.secrets_dir)])
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def start_agent(self, host: str) -> None:
        """Start the agent of a region host (again, after a drill killed its region)."""
        cloud = dict(self.region_hosts())[host]
        self._spawn(host, f"agent-{cloud}", [sys.executable, "-m", "pgcrdr", "agent", "--region", cloud,
                                             "--topology", str(self.topology_path), "--home", str(self.home(host))])

    def wait_ready(self, timeout: float) -> None:
        import httpx

        from pgcrdr.agentapi.client import AgentClient, AgentError
        from pgcrdr.platform import read_pid

        ctl = self.settings("ctl")
        token = (self.secrets_dir / "agent-token").read_text().strip()
        deadline = time.monotonic() + timeout
        last = "nothing answered yet"
        with in_host(self.lab, "ctl"):
            while time.monotonic() < deadline:
                dead = [f"{host} ({name})" for host, name in self._parts()
                        if read_pid(self.settings(host).run_dir / f"{name}.pid") is None]
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
                try:
                    api = httpx.get(ctl.api_url + "/v1/clouds", timeout=2).status_code == 200
                except httpx.HTTPError as exc:
                    last, api = f"control plane: {exc}", False
                if api and all(healthy):
                    return
                time.sleep(0.5)
        raise LabError(f"the lab deployment was not ready after {timeout:.0f}s: {last}")

    def _parts(self) -> list[tuple[str, str]]:
        return [(host, f"agent-{cloud}") for host, cloud in self.region_hosts()] + [("ctl", "pgcrdr")]

    def stop(self) -> list[str]:
        """Stop every part by PID (control plane first), then anything left of its hosts' homes."""
        from pgcrdr.platform import pid_path, read_pid, stop_everything, stop_pid

        said: list[str] = []
        if not self.topology_path.exists():
            return said
        for host in ["ctl", *[h for h, _ in self.region_hosts()]]:
            settings = self.settings(host)
            said += stop_everything(settings)
        store = read_pid(pid_path(self.settings("ctl"), "store-etcd"))
        if store:  # last: the agents and the control plane used it until they stopped
            stop_pid(store, timeout=30)
            said.append(f"stopped the global etcd (pid {store})")
        return said

    def api_token(self) -> str:
        return (self.home("ctl") / "control" / "api-token").read_text().strip()
