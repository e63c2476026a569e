"""``pgcrdr``: the operator CLI (start/stop the platform, status, tokens).

Service operations are done with the real ``avn`` CLI, which users already know.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from pgcrdr.agentapi.client import AgentClient, AgentError
from pgcrdr.config import DEFAULT_HOME, RegionConfig, Settings
from pgcrdr.controlplane.store import StoreError, StoreSettingsError
from pgcrdr.platform import (
    STORE_MEMBER_PID,
    Platform,
    agent_token_file,
    api_answer,
    api_healthy,
    create_token,
    initialize,
    pid_path,
    read_pid,
    stop_everything,
    token_file,
)

console = Console(stderr=True)


def _settings(home: str | None, port_offset: int | None) -> Settings:
    return Settings.from_env(home=home, port_offset=port_offset)


home_opt = click.option(
    "--home", envvar="PGCRDR_HOME", default=None,
    help=f"Directory holding all pgcrdr state (env PGCRDR_HOME, default {DEFAULT_HOME}).",
)
offset_opt = click.option(
    "--port-offset", type=int, default=None,
    help="Shift every port by N so two instances can run side by side (env PGCRDR_PORT_OFFSET).",
)


class _Main(click.Group):
    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        # A wrong store setting, or no etcd member answering, ends any command with its message.
        try:
            return super().invoke(ctx)
        except (StoreError, StoreSettingsError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main)
def main() -> None:
    """pgcrdr: PostgreSQL cross-region disaster recovery control plane."""


def _print_banner(settings: Settings, password: str | None, token: str, email: str) -> None:
    click.echo(f"pgcrdr is up (home {settings.home})")
    click.echo(f"  API URL:      {settings.api_url}")
    click.echo(f"  Console URL:  {settings.api_url}/")
    click.echo(f"  API token:    {token}")
    click.echo(f"  Login email:  {email}")
    if password:
        click.echo(f"  Password:     {password}   (shown once; also in {settings.control_dir}/admin-password)")
    click.echo(f"  Regions:      {', '.join(r.cloud_name for r in settings.regions)}")
    # The real token, so the line can be pasted as is (it is printed just above anyway).
    click.echo(f"  Try:          avn --url {settings.api_url} --auth-token {token} project list")
    sys.stdout.flush()


@main.command()
@home_opt
@offset_opt
@click.option("--detach", is_flag=True, help="Run in the background and return once the API answers.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait with --detach.")
def up(home: str | None, port_offset: int | None, detach: bool, timeout: float) -> None:
    """Start the control plane and every region (foreground unless --detach)."""
    settings = _settings(home, port_offset)
    existing = read_pid(pid_path(settings, "pgcrdr"))
    if existing:
        raise click.ClickException(f"pgcrdr is already running under {settings.home} (pid {existing}); "
                                   "use 'pgcrdr down' first")
    busy = _ports_in_use(settings)
    if busy:
        raise click.ClickException(
            f"port(s) {', '.join(map(str, busy))} already in use; another pgcrdr or program holds them. "
            "Use --port-offset N (or PGCRDR_PORT_OFFSET) to shift every port")
    if detach:
        creds = initialize(settings)
        logf = open(settings.run_dir / "pgcrdr.log", "ab")
        env = {**os.environ, "PGCRDR_HOME": str(settings.home), "PGCRDR_PORT_BASE": str(settings.port_base),
               "PGCRDR_PORT_OFFSET": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "pgcrdr", "up"], stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise click.ClickException(
                    f"pgcrdr exited with code {proc.returncode}; see {settings.run_dir}/pgcrdr.log")
            if api_healthy(settings):
                _print_banner(settings, creds.password, creds.token, creds.email)
                return
            time.sleep(0.2)
        raise click.ClickException(f"pgcrdr did not answer within {timeout:.0f}s; see {settings.run_dir}/pgcrdr.log")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per agent poll is noise
    pid_path(settings, "pgcrdr").parent.mkdir(parents=True, exist_ok=True)
    platform = Platform(settings)
    pid_path(settings, "pgcrdr").write_text(str(os.getpid()))
    try:
        console.print(f"starting regions: {', '.join(r.cloud_name for r in settings.regions)}")
        platform.start_agents()
        creds = platform.creds
        platform.serve(on_ready=lambda: _print_banner(settings, creds.password, creds.token, creds.email))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        console.print("stopping pgcrdr ...")
        platform.shutdown()
        pid_path(settings, "pgcrdr").unlink(missing_ok=True)
        console.print("pgcrdr stopped")


def _ports_in_use(settings: Settings) -> list[int]:
    """The fixed ports pgcrdr binds at start (API, agents, etcd) that something else holds."""
    import socket

    from pgcrdr.platform import running_agent

    ports = [settings.api_port]
    for r in settings.regions:
        if running_agent(settings, r) is None:  # a running agent of ours is adopted, not restarted
            ports += [r.agent_port, r.etcd_client_port, r.etcd_peer_port]
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((settings.host, port))
            except OSError:
                busy.append(port)
    return busy


@main.command()
@home_opt
@offset_opt
def down(home: str | None, port_offset: int | None) -> None:
    """Stop every process pgcrdr started (control plane, agents, PostgreSQL, etcd, proxies)."""
    settings = _settings(home, port_offset)
    said = stop_everything(settings)
    for line in said:
        click.echo(line)
    click.echo("pgcrdr is down" if said else "nothing was running")


@main.command()
@home_opt
@offset_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--topology", default=None, type=click.Path(dir_okay=False),
              help="A deployment's topology file: the control plane of --control-host, with --secrets.")
@click.option("--control-host", default=None, help="With --topology: this host's name (default: the first).")
@click.option("--secrets", default=None, type=click.Path(file_okay=False),
              help="With --topology: the control plane's secrets (default: <home>/secrets).")
def status(home: str | None, port_offset: int | None, as_json: bool, topology: str | None,
           control_host: str | None, secrets: str | None) -> None:
    """API URL, token, the replica that answered and the one that leads, and the health of every
    region."""
    if topology is None:
        settings = _settings(home, port_offset)
    else:
        from pgcrdr.topology import TopologyError, load_topology

        try:
            settings = Settings.from_topology(load_topology(topology), home=home, control_host=control_host,
                                              secrets=secrets)
        except (TopologyError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    token = token_file(settings).read_text().strip() if token_file(settings).exists() else None
    regions: list[dict[str, Any]] = []
    agent_token = agent_token_file(settings).read_text().strip() if agent_token_file(settings).exists() else ""
    for r in settings.regions:
        client = AgentClient(settings.agent_url(r), agent_token, timeout=2.0, verify=settings.agent_verify)
        try:
            h = client.health()
            regions.append({"cloud_name": r.cloud_name, "agent_url": settings.agent_url(r), "up": True,
                            "etcd_healthy": h.etcd_healthy, "clusters": h.clusters, "message": h.message})
        except AgentError as exc:
            regions.append({"cloud_name": r.cloud_name, "agent_url": settings.agent_url(r), "up": False,
                            "etcd_healthy": False, "clusters": None, "message": str(exc)})
        finally:
            client.close()
    data = {
        "home": str(settings.home),
        "api_url": settings.api_url,
        "console_url": settings.api_url + "/",
        **api_answer(settings),
        "pid": read_pid(pid_path(settings, "pgcrdr")),
        "token": token,
        "regions": regions,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"control plane: {'up' if data['api_up'] else 'down'} at {data['api_url']} (home {data['home']})"
               + (f"; replica {data['replica']}, leader {data['leader'] or 'none yet'}" if data["replica"] else ""))
    click.echo(f"API token:     {token or '(none yet: run pgcrdr up)'}")
    table = Table("region", "agent", "etcd", "clusters", "message")
    for row in regions:
        table.add_row(row["cloud_name"], "up" if row["up"] else "down", "healthy" if row["etcd_healthy"] else "-",
                      str(row["clusters"] if row["clusters"] is not None else "-"), row["message"] or "")
    Console().print(table)
    if not data["api_up"]:
        sys.exit(1)


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@home_opt
@offset_opt
@click.option("--description", default="created with pgcrdr token create", show_default=True)
def token_create(home: str | None, port_offset: int | None, description: str) -> None:
    """Create a new API token and print it (it is stored hashed; it cannot be shown again)."""
    click.echo(create_token(_settings(home, port_offset), description))



@main.group()
def region() -> None:
    """Region outage drills: take a whole region down and bring it back."""


def _region(settings: Settings, name: str) -> RegionConfig:
    r = settings.region(name)
    if r is None:
        raise click.ClickException(
            f"Unknown region {name}; regions: {', '.join(x.cloud_name for x in settings.regions)}")
    return r


@region.command("down")
@home_opt
@offset_opt
@click.argument("name")
def region_down(home: str | None, port_offset: int | None, name: str) -> None:
    """Kill every process of a region at once (SIGKILL, agent included), keeping its disk."""
    from pgcrdr.agent.processes import stop_region_processes

    settings = _settings(home, port_offset)
    r = _region(settings, name)
    client = AgentClient(settings.agent_url(r), agent_token_file(settings).read_text().strip(), timeout=5,
                         verify=settings.agent_verify)
    try:
        client.region_outage()
    except AgentError as exc:
        click.echo(f"agent did not take the drill ({exc}); killing by PID", err=True)
    finally:
        client.close()
    pid = read_pid(pid_path(settings, f"agent-{name}"))
    if pid:
        os.kill(pid, 9)
    killed = stop_region_processes(settings, r, graceful=False)
    click.echo(f"region {name} is down (disk kept){'; also killed ' + str(killed) if killed else ''}")


@region.command("up")
@home_opt
@offset_opt
@click.argument("name")
def region_up(home: str | None, port_offset: int | None, name: str) -> None:
    """Start a region's agent again, as a region that recovered. Its clusters stay held until the
    control plane confirms what each must run (a fenced primary never restarts as a writer)."""
    from pgcrdr.platform import start_agent, wait_agent

    settings = _settings(home, port_offset)
    r = _region(settings, name)
    pid = read_pid(pid_path(settings, f"agent-{name}"))
    if pid:
        raise click.ClickException(f"region {name} is already up (agent pid {pid})")
    proc = start_agent(settings, r)
    try:
        wait_agent(settings, r, proc)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"region {name} is up (agent pid {proc.pid})")


@main.group()
def drill() -> None:
    """Fault drills for rehearsing runbooks (they really break things)."""


@drill.command("kill-node")
@home_opt
@offset_opt
@click.argument("service")
@click.argument("node")
@click.option("--project", default="pgcrdr", show_default=True)
@click.option("--restart-after", type=float, default=60.0, show_default=True,
              help="Seconds before the region agent may restart the node.")
def drill_kill_node(home: str | None, port_offset: int | None, service: str, node: str, project: str,
                    restart_after: float) -> None:
    """SIGKILL one node of a service (Patroni and PostgreSQL), as if its host died."""
    from pgcrdr.controlplane.store import open_store

    settings = _settings(home, port_offset)
    store = open_store(settings)
    try:
        svc = store.get_service(project, service)
    finally:
        store.close()
    if svc is None or svc.deleting:
        raise click.ClickException(f"Service {service} does not exist in project {project}")
    nodes = [n.name for n in (svc.status.nodes if svc.status else [])]
    if node not in nodes:
        raise click.ClickException(f"Service {service} has no node {node}; its nodes: {', '.join(nodes) or 'none'}")
    region = settings.region(svc.cloud)
    assert region is not None
    client = AgentClient(settings.agent_url(region), agent_token_file(settings).read_text().strip(),
                         verify=settings.agent_verify)
    try:
        res = client.kill_node(svc.cluster, node, restart_after=restart_after)
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
    click.echo(f"killed {node} of {service} (pids {', '.join(map(str, res.killed_pids)) or 'none'}); "
               f"it may restart after {restart_after:.0f}s")


@drill.command("agent-fault")
@home_opt
@offset_opt
@click.argument("region_name", metavar="REGION")
@click.option("--mode", type=click.Choice(["freeze", "slow", "fail"]), default=None,
              help="freeze: calls get no answer until they time out; slow: calls wait --delay first; "
                   "fail: calls are refused at once.")
@click.option("--seconds", type=float, default=60.0, show_default=True, help="How long the fault lasts.")
@click.option("--delay", type=float, default=5.0, show_default=True, help="Seconds added to each call (slow).")
@click.option("--method", "methods", multiple=True, help="Only calls with this HTTP method (repeatable).")
@click.option("--path-contains", default=None, help="Only calls whose path contains this, e.g. /promote.")
@click.option("--lose-answer", is_flag=True,
              help="The call is sent and executed by the agent, but its answer is lost (a timeout).")
@click.option("--clear", "clear_rules", is_flag=True, help="Remove every fault of REGION.")
def drill_agent_fault(home: str | None, port_offset: int | None, region_name: str, mode: str | None,
                      seconds: float, delay: float, methods: tuple[str, ...], path_contains: str | None,
                      lose_answer: bool, clear_rules: bool) -> None:
    """Make REGION's agent look frozen, slow or failing to the control plane for a while (the
    agent itself runs on). Read by the control plane's agent client from
    <home>/control/agent-faults.json."""
    from pgcrdr.agentapi import faults

    settings = _settings(home, port_offset)
    _region(settings, region_name)
    if clear_rules:
        n = faults.clear(settings.home, region_name)
        click.echo(f"cleared {n} agent fault(s) of region {region_name}")
        return
    if mode is None:
        raise click.UsageError("give --mode freeze|slow|fail, or --clear")
    if seconds <= 0:
        raise click.UsageError("--seconds must be positive")
    try:
        rule = faults.FaultRule(region=region_name, mode=mode, until=time.time() + seconds,  # type: ignore[arg-type]
                                delay_s=delay if mode == "slow" else 0.0, methods=[m.upper() for m in methods],
                                path_contains=path_contains, lose_answer=lose_answer)
    except ValueError as exc:
        raise click.UsageError(f"invalid fault: {exc}") from None
    path = faults.inject(settings.home, rule)
    what = {"freeze": "get no answer until they time out", "slow": f"wait {delay:g} s before being sent",
            "fail": "are refused at once"}[mode]
    scope = " ".join(filter(None, ["/".join(rule.methods), f"paths containing {path_contains!r}"
                                   if path_contains else ""])) or "every call"
    click.echo(f"for {seconds:g} s, the control plane's calls to region {region_name} ({scope}) {what}"
               f"{'; their answers are lost after the agent executed them' if lose_answer else ''} "
               f"(rule in {path}; undo with --clear)")


# --- drills of a pair's moves (pgcrdr.drill) ----------------------------------------------------

api_url_opt = click.option("--api-url", envvar="PGCRDR_API_URL", default=None,
                           help="The control plane's API (any replica; default: this home's).")
api_token_opt = click.option("--token", "api_token", envvar="PGCRDR_TOKEN", default=None,
                             help="An API token (default: this home's, control/api-token).")


def _drill_api(settings: Settings, project: str, api_url: str | None, api_token: str | None) -> Any:
    from pgcrdr.drill.api import DrillApi

    if api_token is None:
        path = token_file(settings)
        if not path.exists():
            raise click.ClickException(f"no API token in {path}: start pgcrdr (pgcrdr up) or pass --token")
        api_token = path.read_text().strip()
    return DrillApi(api_url or settings.api_url, api_token, project)


def _run_drill(kind: str, pair: str, project: str, home: str | None, port_offset: int | None, api_url: str | None,
               api_token: str | None, in_place: bool, yes: bool, keep: bool, as_json: bool, markdown: bool,
               step_timeout: float) -> None:
    from pgcrdr.drill import plan
    from pgcrdr.drill.api import ApiError
    from pgcrdr.drill.outage import AgentOutage
    from pgcrdr.drill.report import as_markdown, as_text
    from pgcrdr.drill.runner import Drill, DrillOptions
    from pgcrdr.drill.ui import RichUi

    settings = _settings(home, port_offset)
    api = _drill_api(settings, project, api_url, api_token)
    try:
        try:
            svc = api.service_or_none(pair)
            dr = api.dr(pair) if svc is not None else None
            why = plan.refusal(pair, svc, dr)
            peer = api.service(dr["peer_service"]) if why is None and dr is not None else None
            if why is None and peer is not None:
                why = plan.peer_refusal(peer)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        if why is not None:
            raise click.ClickException(why)
        assert svc is not None and peer is not None
        agent_token = ""
        if kind == "failover":
            path = agent_token_file(settings)
            if not path.exists():
                raise click.ClickException(f"the failover drill's outage needs the agents' token ({path}); run it "
                                           "on the control host")
            agent_token = path.read_text().strip()
        if in_place and not yes:
            what = ("fail over (its primary's nodes are killed), restore and take back"
                    if kind == "failover" else "switch over and back")
            click.confirm(f"This will {what} the production pair {pair} / {peer['service_name']} itself, under a "
                          "write load. Continue?", abort=True)
        opts = DrillOptions(project=project, pair=pair, kind=kind, in_place=in_place, keep=keep,  # type: ignore[arg-type]
                            step_timeout_s=step_timeout)
        with RichUi(console) as ui:
            drill = Drill(api=api, outage=AgentOutage(settings, agent_token, project), opts=opts, ui=ui)
            report = drill.run(svc, peer)
        body = {"kind": kind, "in_place": in_place, "state": report.state, "report": report.model_dump(mode="json")}
        try:
            kept = api.add_drill(pair, body)
            console.print(f"report kept as drill {kept['drill_id']} of {pair} (pgcrdr drill history {pair})")
        except ApiError as exc:
            console.print(f"[red]the report could not be kept with {pair}: {exc}[/red]")
        if as_json:
            click.echo(report.model_dump_json(indent=2))
        elif markdown:
            click.echo(as_markdown(report))
        else:
            click.echo(as_text(report))
        if report.state != "done":
            sys.exit(130 if report.state == "interrupted" else 1)
    finally:
        api.close()


def _pair_target(f: Any) -> Any:
    """The options naming a pair and the control plane to ask (every drill command has them)."""
    for deco in reversed([home_opt, offset_opt, api_url_opt, api_token_opt, click.argument("pair"),
                          click.option("--project", default="pgcrdr", show_default=True)]):
        f = deco(f)
    return f


def _drill_command(kind: str, doc: str) -> Any:
    @drill.command(kind, help=doc)
    @_pair_target
    @click.option("--in-place", is_flag=True, help="Run on the pair itself, not on a fork of it (asks first).")
    @click.option("--yes", is_flag=True, help="With --in-place: do not ask.")
    @click.option("--keep", is_flag=True, help="Keep the fork pair after the drill (removed on Ctrl-C anyway).")
    @click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
    @click.option("--markdown", is_flag=True, help="The report as Markdown.")
    @click.option("--step-timeout", type=float, default=600.0, show_default=True,
                  help="Seconds each step may take before the drill gives up.")
    def command(pair: str, project: str, home: str | None, port_offset: int | None, api_url: str | None,
                api_token: str | None, in_place: bool, yes: bool, keep: bool, as_json: bool, markdown: bool,
                step_timeout: float) -> None:
        if as_json and markdown:
            raise click.UsageError("choose one of --json and --markdown")
        _run_drill(kind, pair, project, home, port_offset, api_url, api_token, in_place, yes, keep, as_json,
                   markdown, step_timeout)

    return command


drill_switchover = _drill_command(
    "switchover", "Rehearse a switchover and the switchback of the pair whose primary is PAIR, under a write "
                  "load through the Service URI, on a fork of the pair (default) or --in-place; report and keep "
                  "the figures with the pair.")
drill_failover = _drill_command(
    "failover", "Rehearse an outage of the primary of PAIR, the failover, the failback restore and the failback "
                "takeover, under a write load through the Service URI, on a fork of the pair (default: only the "
                "fork's primary is hit) or --in-place; report and keep the figures with the pair.")


@drill.command("history")
@_pair_target
@click.option("--json", "as_json", is_flag=True, help="Every drill's record and report as JSON.")
def drill_history(pair: str, project: str, home: str | None, port_offset: int | None, api_url: str | None,
                  api_token: str | None, as_json: bool) -> None:
    """The drills kept with the pair whose primary is PAIR, oldest first."""
    from pgcrdr.drill.api import ApiError

    api = _drill_api(_settings(home, port_offset), project, api_url, api_token)
    try:
        drills = api.drills(pair)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        api.close()
    if as_json:
        click.echo(json.dumps(drills, indent=2))
        return
    if not drills:
        click.echo(f"no drills kept with {pair}")
        return
    from pgcrdr.drill.report import history_lines

    for line in history_lines(drills):
        click.echo(line)


@main.group()
def terraform() -> None:
    """Terraform: pgcrdr's aiven/aiven provider."""


@terraform.command("install")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Where to write the provider and the CLI config (default ~/.config/pgcrdr/terraform).")
def terraform_install(directory: str | None) -> None:
    """Install the aiven/aiven provider for Terraform (a dev_overrides CLI config; no terraform init)."""
    from pathlib import Path

    from pgcrdr.terraform.install import default_dir, install

    done = install(Path(directory) if directory else default_dir())
    click.echo(f"Provider aiven/aiven installed: {done.executable}")
    click.echo(f"Terraform CLI config:           {done.cli_config}")
    click.echo("Use it (no `terraform init` needed; Terraform warns that a development override is in use):")
    click.echo(f"  export TF_CLI_CONFIG_FILE={done.cli_config}")
    click.echo("  export AIVEN_WEB_URL=API_URL AIVEN_TOKEN=TOKEN   # both shown by `pgcrdr status`")


# --- the lab of hosts (network namespaces) ------------------------------------------------------

@main.group()
def lab() -> None:
    """A lab of hosts on this machine (network namespaces joined by a bridge of their own), for
    tests and drills of regions on their own hosts. Needs root."""


def _lab_error(exc: Exception) -> None:
    console.print(f"[red]{exc}[/red]")
    sys.exit(1)


LAB_ROOT = "/var/lib/pgcrdr-lab"
lab_root_opt = click.option("--root", default=None, type=click.Path(file_okay=False),
                            help=f"Where a deployed lab keeps its hosts' homes (default {LAB_ROOT}/<id>).")


def _lab_root(root: str | None, lab_id: str) -> Path:
    return Path(root) if root else Path(LAB_ROOT) / lab_id


@lab.command("up")
@click.option("--id", "lab_id", default="lab", show_default=True, help="1-6 lower-case letters or digits.")
@click.option("--regions", type=int, default=2, show_default=True, help="Region hosts (besides the control host).")
@click.option("--subnet", type=int, default=7, show_default=True, help="The lab uses 10.249.SUBNET.0/24.")
@click.option("--cloud", "clouds", multiple=True, help="Cloud name of each region host, in order (repeatable).")
@click.option("--deploy", is_flag=True, help="Also run pgcrdr on it: the control plane inside the control host, "
                                             "an agent inside each region host (TLS, its own home each).")
@click.option("--replicas", is_flag=True, help="A control-plane replica on each region host, over a global etcd "
                                               "on the region hosts and a witness host w (default: one control "
                                               "plane on the control host, on SQLite).")
@lab_root_opt
def lab_up_cmd(lab_id: str, regions: int, subnet: int, clouds: tuple[str, ...], deploy: bool, replicas: bool,
               root: str | None) -> None:
    """Create the lab's hosts and print its topology file (with --deploy: run pgcrdr on them)."""
    from pgcrdr.lab import LabDeployment, LabError, lab_down, lab_up, plan_lab, topology_text

    try:
        the_lab = lab_up(plan_lab(lab_id, regions, subnet, witness=replicas))
        names = list(clouds) or [f"lab-region-{i}" for i in range(regions)]
        region_hosts = tuple(h.name for h in the_lab.region_hosts)
        on_hosts: tuple[str, ...] = region_hosts if replicas else ("ctl",)
        store_hosts: tuple[str, ...] = (*region_hosts, "w") if replicas else ()
        if not deploy:
            click.echo(topology_text(the_lab, names, replicas=on_hosts, store_hosts=store_hosts))
            return
        deployment = LabDeployment(the_lab, _lab_root(root, lab_id), names, replicas=on_hosts,
                                   store_hosts=store_hosts)
        try:
            deployment.start()
        except Exception as exc:  # noqa: BLE001 - said in one line; the lab is removed
            lab_down(lab_id)
            raise LabError(f"pgcrdr did not start on the lab: {exc}") from None
    except LabError as exc:
        _lab_error(exc)
        return
    ctl = deployment.replica_settings(deployment.replicas[0])
    click.echo(f"lab {lab_id} is up; pgcrdr runs on it (homes under {deployment.root})")
    click.echo(f"  topology:  {deployment.topology_path}")
    for host in deployment.replicas:
        click.echo(f"  API URL:   {deployment.replica_settings(host).api_url}   (replica on {host}; reachable from "
                   "inside the lab's hosts only)")
    click.echo(f"  API token: in {ctl.control_dir / 'api-token'}")
    click.echo(f"  Try:       ip netns exec {the_lab.host('ctl').netns} avn --url {ctl.api_url} "
               f"--auth-token \"$(cat {ctl.control_dir / 'api-token'})\" project list")
    click.echo(f"  Drills:    pgcrdr drill partition r0 --id {lab_id}   /   pgcrdr drill heal r0 --id {lab_id}")
    click.echo(f"  Stop:      pgcrdr lab down --id {lab_id}")


@lab.command("down")
@click.option("--id", "lab_id", default="lab", show_default=True)
@lab_root_opt
def lab_down_cmd(lab_id: str, root: str | None) -> None:
    """Stop pgcrdr on the lab (when deployed) by PID, then remove every namespace (host, bridge)."""
    from pgcrdr.lab import LabDeployment, LabError, lab_down

    try:
        deployment = LabDeployment.existing(lab_id, _lab_root(root, lab_id))
        if deployment is not None:
            for line in deployment.stop():
                console.print(line)
        removed = lab_down(lab_id)
    except LabError as exc:
        _lab_error(exc)
        return
    console.print(f"removed {', '.join(removed)}" if removed else f"no lab {lab_id} found")


@lab.command("bandwidth")
@click.argument("host")
@click.argument("rate", required=False)
@click.option("--id", "lab_id", default="lab", show_default=True)
@click.option("--regions", type=int, default=2, show_default=True)
@click.option("--subnet", type=int, default=7, show_default=True)
def lab_bandwidth_cmd(host: str, rate: str | None, lab_id: str, regions: int, subnet: int) -> None:
    """Cap HOST's link (ctl, r0, r1, ...) at RATE (e.g. 200mbit) with tc tbf; no RATE removes the cap."""
    from pgcrdr.lab import LabError, cap_bandwidth, plan_lab

    try:
        cap_bandwidth(plan_lab(lab_id, regions, subnet), host, rate)
    except LabError as exc:
        _lab_error(exc)


@drill.command("partition")
@click.argument("host")
@click.option("--id", "lab_id", default="lab", show_default=True)
@click.option("--regions", type=int, default=2, show_default=True)
@click.option("--subnet", type=int, default=7, show_default=True)
def drill_partition(host: str, lab_id: str, regions: int, subnet: int) -> None:
    """Cut a lab host (r0, r1, ...) off the others: its processes keep running, clients inside it
    still reach them."""
    from pgcrdr.lab import LabError, partition, plan_lab

    try:
        partition(plan_lab(lab_id, regions, subnet), host)
    except LabError as exc:
        _lab_error(exc)


@drill.command("heal")
@click.argument("host")
@click.option("--id", "lab_id", default="lab", show_default=True)
@click.option("--regions", type=int, default=2, show_default=True)
@click.option("--subnet", type=int, default=7, show_default=True)
def drill_heal(host: str, lab_id: str, regions: int, subnet: int) -> None:
    """Restore a lab host's link after ``pgcrdr drill partition``."""
    from pgcrdr.lab import LabError, heal, plan_lab

    try:
        heal(plan_lab(lab_id, regions, subnet), host)
    except LabError as exc:
        _lab_error(exc)


# --- parts of a deployment on their own hosts (a topology file) --------------------------------

secrets_opt = click.option(
    "--secrets", "secrets", default=None, type=click.Path(file_okay=False),
    help="This part's secrets made by `pgcrdr secrets` (default: <home>/secrets).")


@main.command("secrets")
@click.option("--topology", required=True, type=click.Path(dir_okay=False), help="The deployment's topology file.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the CA, the agent token and one bundle per region (kept on the control host).")
def secrets_cmd(topology: str, out: str) -> None:
    """Make (once; then only what is missing) the deployment's CA, the agent token, and for each
    region a bundle to copy to its host: OUT/<region>/{agent.crt, agent.key, ca.crt, agent-token}."""
    from pgcrdr.security.deployment import SecretsError, ensure_deployment_secrets
    from pgcrdr.topology import TopologyError, load_topology

    try:
        topo = load_topology(topology)
        written = ensure_deployment_secrets(topo, Path(out))
    except (TopologyError, SecretsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {', '.join(written)}" if written else f"{out} is complete: nothing to write")
    for r in topo.regions:
        click.echo(f"  region {r.cloud_name}: copy {Path(out) / r.cloud_name}/ to its host {r.host} "
                   f"(then: pgcrdr agent --region {r.cloud_name} --topology FILE --secrets DIR)")
    click.echo(f"  control plane: pgcrdr controlplane --topology FILE --secrets {out}")


@main.command("agent")
@click.option("--region", "region_name", required=True, help="The region this host runs (its cloud name).")
@click.option("--topology", required=True, type=click.Path(dir_okay=False), help="The deployment's topology file.")
@home_opt
@secrets_opt
@click.option("--token-file", default=None, help="The agent token (default: the one in the secrets).")
def agent_cmd(region_name: str, topology: str, home: str | None, secrets: str | None, token_file: str | None) -> None:
    """Run the agent of a region on this host, in the foreground: it binds to the host address the
    topology gives the region, on the region's ports, and serves its API over TLS."""
    from pgcrdr.security.deployment import SecretsError, load_agent_secrets
    from pgcrdr.topology import TopologyError, load_topology

    try:
        settings = Settings.from_topology(load_topology(topology), home=home, region=region_name, secrets=secrets)
        assert settings.secrets_dir is not None
        load_agent_secrets(settings.secrets_dir, settings.host)
    except (TopologyError, ValueError, SecretsError) as exc:
        raise click.ClickException(str(exc)) from None
    argv = [sys.executable, "-m", "pgcrdr.agent", "--region", region_name, "--topology", topology,
            "--secrets", str(settings.secrets_dir)]
    if token_file:
        argv += ["--token-file", token_file]
    env = {**os.environ, **({"PGCRDR_HOME": home} if home else {})}
    os.execve(sys.executable, argv, env)


@main.command("store-member")
@click.option("--topology", required=True, type=click.Path(dir_okay=False), help="The deployment's topology file.")
@click.option("--name", "member_name", required=True, help="This member's name in [[control.store_members]].")
@click.option("--secrets", "secrets", default=None, type=click.Path(file_okay=False),
              help="The member's TLS bundle (DIR/store-<name> of `pgcrdr secrets`; default <home>/secrets).")
@home_opt
def store_member_cmd(topology: str, member_name: str, secrets: str | None, home: str | None) -> None:
    """Run one member of the global etcd (the control plane's state) on this host, in the
    foreground: etcd on the member's address and ports, its data under <home>/store/<name>; its
    PID is recorded in the home, so `pgcrdr down` stops it. With ``store_tls`` (the default) it
    serves clients and peers over TLS and wants a certificate of the deployment's CA from each."""
    from pgcrdr.controlplane.store.member import MemberSecretsError, member_argv, member_data_dir
    from pgcrdr.topology import TopologyError, load_topology

    try:
        topo = load_topology(topology)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from None
    member = topo.store_member(member_name)
    if member is None:
        names = ", ".join(m.name for m in topo.store_members) or "none: add [[control.store_members]]"
        raise click.ClickException(f"{topology}: no store member {member_name!r} (members: {names})")
    settings = Settings.from_env(home=home)
    try:
        argv = member_argv(topo, member, member_data_dir(settings.home, member),
                           Path(secrets).resolve() if secrets else settings.home / "secrets")
    except MemberSecretsError as exc:
        raise click.ClickException(str(exc)) from None
    data_dir = member_data_dir(settings.home, member)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    # exec keeps this PID: the recorded one is etcd's
    pid_path(settings, STORE_MEMBER_PID).write_text(str(os.getpid()))
    os.execv(argv[0], argv)


@main.command("controlplane")
@click.option("--topology", required=True, type=click.Path(dir_okay=False), help="The deployment's topology file.")
@click.option("--control-host", default=None, help="This host's name in the topology (default: the first).")
@home_opt
@secrets_opt
def controlplane_cmd(topology: str, control_host: str | None, home: str | None, secrets: str | None) -> None:
    """Run the control plane on this host, in the foreground: API, console, reconciler and the
    Service URI endpoints on the control host's address; the regions' agents run on their own
    hosts (`pgcrdr agent`) and are reached at the addresses the topology gives them."""
    from pgcrdr.security.deployment import SecretsError, load_control_secrets
    from pgcrdr.topology import TopologyError, load_topology

    try:
        settings = Settings.from_topology(load_topology(topology), home=home, control_host=control_host,
                                          secrets=secrets)
        assert settings.secrets_dir is not None
        load_control_secrets(settings.secrets_dir)
    except (TopologyError, ValueError, SecretsError) as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    platform = Platform(settings)
    pid_path(settings, "pgcrdr").parent.mkdir(parents=True, exist_ok=True)
    pid_path(settings, "pgcrdr").write_text(str(os.getpid()))
    try:
        creds = platform.creds
        platform.serve(on_ready=lambda: _print_banner(settings, creds.password, creds.token, creds.email))
    finally:
        platform.shutdown()
        pid_path(settings, "pgcrdr").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
