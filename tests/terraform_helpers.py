"""The real `terraform` against a running pgcrdr, with pgcrdr's provider installed by
`pgcrdr terraform install`, running the configurations of ``examples/terraform`` (the Aiven CRDR
setup page and the seed's failback tab, completed) as shipped. Shared by
tests/e2e/test_terraform.py and bench/terraform.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import REPO, VENV_BIN, RunningPlatform

PROJECT = "pgcrdr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"

# The configurations users copy (README, Terraform): run here as shipped, only their variables set.
EXAMPLES = REPO / "examples" / "terraform"


def reverse_integration(hcl: str) -> str:
    """The same configuration with the integration's direction swapped (what a user edits to
    switch over): ``source_service_name`` names the recovery service, ``destination_service_name``
    the primary."""
    src = re.compile(r"(source_service_name\s*=\s*)aiven_postgresql\.primary\.service_name")
    dst = re.compile(r"(destination_service_name\s*=\s*)aiven_postgresql\.recovery\.service_name")
    out, n_src = src.subn(r"\1aiven_postgresql.recovery.service_name", hcl)
    out, n_dst = dst.subn(r"\1aiven_postgresql.primary.service_name", out)
    assert n_src == 1 and n_dst == 1, "the example's integration is not primary -> recovery"
    return out


@dataclass
class Terraform:
    """A working directory and the real `terraform` binary, pointed at one pgcrdr platform."""

    platform: RunningPlatform
    root: Path
    timings: list[tuple[str, float]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)  # passed as TF_VAR_<name>

    @classmethod
    def create(cls, platform: RunningPlatform) -> Terraform:
        root = Path(tempfile.mkdtemp(prefix="pgcrdr-tf-", dir="/tmp"))
        tf = cls(platform, root)
        # Installed exactly as a user does it (README): `pgcrdr terraform install --dir DIR`.
        out = platform.pgcrdr("terraform", "install", "--dir", str(tf.install_dir))
        assert f"TF_CLI_CONFIG_FILE={tf.install_dir / 'terraform.rc'}" in out.stdout, out.stdout
        tf.workdir.mkdir()
        return tf

    @property
    def install_dir(self) -> Path:
        return self.root / "install"

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.platform.env.items() if not k.startswith(("TF_", "AIVEN_"))}
        return {**env, "TF_CLI_CONFIG_FILE": str(self.install_dir / "terraform.rc"), "TF_IN_AUTOMATION": "1",
                "CHECKPOINT_DISABLE": "1", "AIVEN_WEB_URL": self.platform.api_url, "AIVEN_TOKEN": self.platform.token,
                "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
                **{f"TF_VAR_{k}": v for k, v in self.variables.items()}}

    def use_example(self, name: str, *files: str) -> list[str]:
        """Make the working directory hold exactly the example ``examples/terraform/NAME`` (or only
        ``files`` of it), copied byte for byte; returns the file names."""
        src = EXAMPLES / name
        names = list(files) or sorted(p.name for p in src.glob("*.tf"))
        for old in self.workdir.glob("*.tf"):
            old.unlink()
        for n in names:
            shutil.copyfile(src / n, self.workdir / n)
        return names

    def write(self, hcl: str, name: str = "main.tf") -> None:
        (self.workdir / name).write_text(hcl)

    def read(self, name: str) -> str:
        return (self.workdir / name).read_text()

    def remove(self, name: str) -> None:
        (self.workdir / name).unlink(missing_ok=True)

    def run(self, *args: str, step: str | None = None, check: bool = True,
            timeout: float = 900) -> subprocess.CompletedProcess:
        """`terraform ARGS` (bounded: the provider's own waits are bounded below 20 min)."""
        exe = shutil.which("terraform")
        assert exe, "terraform is not on PATH"
        t0 = time.monotonic()
        proc = subprocess.run([exe, *args, "-no-color"] if args[0] != "output" else [exe, *args],
                              cwd=self.workdir, env=self.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        self.timings.append((step or " ".join(args[:1]), time.monotonic() - t0))
        if check and proc.returncode != 0:
            raise AssertionError(f"terraform {' '.join(args)} failed rc={proc.returncode}\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def apply(self, step: str) -> subprocess.CompletedProcess:
        return self.run("apply", "-auto-approve", "-input=false", step=step)

    def plan_is_empty(self, step: str) -> None:
        """`terraform plan -detailed-exitcode`: 0 = the configuration matches reality, 2 = changes."""
        proc = self.run("plan", "-detailed-exitcode", "-input=false", step=step, check=False)
        assert proc.returncode == 0, f"plan not empty (rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}"

    def plan_changes_no_resource(self, step: str) -> None:
        """Like plan_is_empty, but outputs may change: after a move done outside Terraform (API,
        avn) the examples' ``disaster_recovery_status`` output reads the new roles."""
        proc = self.run("plan", "-detailed-exitcode", "-input=false", step=step, check=False)
        assert proc.returncode in (0, 2), f"plan failed (rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}"
        if proc.returncode == 2:
            assert "will perform the following actions" not in proc.stdout and "Changes to Outputs" in proc.stdout, \
                proc.stdout

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
