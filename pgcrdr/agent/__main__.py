"""``python -m pgcrdr.agent --region CLOUD_NAME [--token-file PATH]``: the region agent.

Settings come from the environment (``Settings.from_env``: PGCRDR_HOME, PGCRDR_PORT_BASE,
PGCRDR_PORT_OFFSET, PGCRDR_REGIONS, ...). Serves the agent API on 127.0.0.1:<agent port of the
region> (with ``--topology``: on its host's address, over TLS with the region's bundle),
supervises the region's etcd, Patroni/PostgreSQL nodes and HAProxy endpoints, and stops
all of them on SIGTERM/SIGINT before exiting.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import uvicorn

from pgcrdr.agent.app import create_app
from pgcrdr.agent.runtime import RegionRuntime
from pgcrdr.config import Settings
from pgcrdr.security.deployment import AgentSecrets, SecretsError, load_agent_secrets

log = logging.getLogger("pgcrdr.agent")


def _check_node_user_access(settings: Settings, paths: list[tuple[str, Path]]) -> list[str]:
    """Problems the unprivileged node user would hit, each naming the path (root only)."""
    if os.geteuid() != 0:
        return []
    problems = []
    for test, path in paths:
        r = subprocess.run(["runuser", "-u", settings.os_user, "--", "test", test, str(path)],
                           capture_output=True)
        if r.returncode != 0:
            problems.append(f"user {settings.os_user} cannot access {path} (test {test} failed): "
                            "make it and every parent directory readable/traversable by that user")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgcrdr.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True, help="cloud name of the region, e.g. local-europe-west1")
    parser.add_argument("--token-file",
                        help="file holding the bearer token (default: $PGCRDR_HOME/control/agent-token)")
    parser.add_argument("--topology", help="the deployment's topology file: the agent binds to its region's "
                                           "host address, uses the ports the file gives and serves over TLS")
    parser.add_argument("--secrets", help="with --topology: this region's bundle made by `pgcrdr secrets` "
                                          "(agent.crt, agent.key, ca.crt, agent-token; default <home>/secrets)")
    parser.add_argument("--log-level", default=os.environ.get("PGCRDR_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tls: AgentSecrets | None = None
    if args.topology:
        from pgcrdr.topology import TopologyError, load_topology

        try:
            settings = Settings.from_topology(load_topology(args.topology), region=args.region, secrets=args.secrets)
            assert settings.secrets_dir is not None
            tls = load_agent_secrets(settings.secrets_dir, settings.host)
        except (TopologyError, ValueError, SecretsError) as exc:
            print(f"agent: {exc}", file=sys.stderr)
            return 2
    else:
        settings = Settings.from_env()
    region = settings.region(args.region)
    if region is None:
        known = ", ".join(r.cloud_name for r in settings.regions)
        print(f"agent: unknown region {args.region!r} (known: {known})", file=sys.stderr)
        return 2
    token_file = Path(args.token_file) if args.token_file else settings.agent_token_path
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        print(f"agent: cannot read token file {token_file}: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"agent: token file {token_file} is empty", file=sys.stderr)
        return 2

    runtime = RegionRuntime(settings, region)
    runtime.prepare_dirs()
    problems = _check_node_user_access(settings, [
        ("-x", settings.node_venv / "bin" / "python"),  # runs Patroni (agent/patroni.py, PATRONI_LAUNCHER)
        ("-x", settings.pg_bin_dir / "postgres"),
        ("-x", runtime.layout.region_dir),
        ("-w", runtime.layout.etcd_dir),
    ])
    if problems:
        for p in problems:
            print(f"agent: {p}", file=sys.stderr)
        return 2

    log.info("region agent %s starting on %s (home %s)", region.cloud_name, settings.agent_url(region), settings.home)
    server = uvicorn.Server(uvicorn.Config(
        create_app(runtime, token), host=settings.host, port=region.agent_port, log_level="warning", access_log=False,
        ssl_certfile=str(tls.cert_file) if tls else None, ssl_keyfile=str(tls.key_file) if tls else None))

    def _on_signal(signum: int, _frame: object) -> None:
        # uvicorn installs its own handlers while serving and re-raises the signal once it has
        # stopped; landing here (instead of the default action) lets the finally below stop
        # every child before the agent exits.
        log.info("signal %s received", signum)
        server.should_exit = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        runtime.start()
        server.run()  # returns after SIGTERM/SIGINT
    finally:
        log.info("region agent %s stopping its processes", region.cloud_name)
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
