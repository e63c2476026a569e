"""The real `terraform` against a running pgcrdr, with pgcrdr's provider installed by
`pgcrdr terraform install`; and the HCL of the Aiven CRDR pages (setup page and the seed's
failback tab). Shared by tests/e2e/test_terraform.py and bench/terraform.py."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import VENV_BIN, RunningPlatform

PROJECT = "pgcrdr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"

HEADER = """terraform {
  required_providers {
    aiven = {
      source = "aiven/aiven"
    }
  }
}

variable "project_name" { default = "%(project)s" }
variable "primary_service_name" { default = "%(primary)s" }
variable "recovery_service_name" { default = "%(recovery)s" }
variable "service_plan" { default = "startup-4" }
variable "primary_cloud_region" { default = "%(pri_cloud)s" }
variable "recovery_cloud_region" { default = "%(rec_cloud)s" }
"""

# The seed's failback tab, step 1 (and the services of the CRDR setup page).
SERVICES = """
resource "aiven_postgresql" "primary" {
  project      = var.project_name
  service_name = var.primary_service_name
  plan         = var.service_plan
  cloud_name   = var.primary_cloud_region
}

resource "aiven_postgresql" "recovery" {
  project      = var.project_name
  service_name = var.recovery_service_name
  plan         = var.service_plan
  cloud_name   = var.recovery_cloud_region
}
"""

# The Aiven CRDR setup page's Terraform tab; %(source)s/%(dest)s are `primary`/`recovery`.
SETUP_INTEGRATION = """
# Disaster recovery integration
resource "aiven_service_integration" "disaster_recovery" {
  project                  = var.project_name
  integration_type         = "disaster_recovery"
  source_service_name      = aiven_postgresql.%(source)s.service_name
  destination_service_name = aiven_postgresql.%(dest)s.service_name

  depends_on = [
    aiven_postgresql.primary,
    aiven_postgresql.recovery
  ]
}
"""

# The seed's failback tab, step 2; %(source)s/%(dest)s are `primary`/`recovery` (reversed for a switchover).
RESTORED_INTEGRATION = """
resource "aiven_service_integration" "disaster_recovery_restored" {
  project                  = var.project_name
  integration_type         = "disaster_recovery"
  source_service_name      = aiven_postgresql.%(source)s.service_name
  destination_service_name = aiven_postgresql.%(dest)s.service_name

  depends_on = [
    aiven_postgresql.primary,
    aiven_postgresql.recovery
  ]
}

# The roles as they are once the integration is applied (data sources read after it), for
# `terraform output disaster_recovery_status`.
data "aiven_postgresql" "primary" {
  project      = var.project_name
  service_name = aiven_postgresql.primary.service_name
  depends_on   = [aiven_service_integration.disaster_recovery_restored]
}

data "aiven_postgresql" "recovery" {
  project      = var.project_name
  service_name = aiven_postgresql.recovery.service_name
  depends_on   = [aiven_service_integration.disaster_recovery_restored]
}

output "disaster_recovery_status" {
  value = {
    (data.aiven_postgresql.primary.service_name) = {
      state                  = data.aiven_postgresql.primary.state
      disaster_recovery_role = data.aiven_postgresql.primary.disaster_recovery_role
    }
    (data.aiven_postgresql.recovery.service_name) = {
      state                  = data.aiven_postgresql.recovery.state
      disaster_recovery_role = data.aiven_postgresql.recovery.disaster_recovery_role
    }
  }
}
"""


def header(primary: str, recovery: str) -> str:
    return HEADER % {"project": PROJECT, "primary": primary, "recovery": recovery, "pri_cloud": PRI_CLOUD,
                     "rec_cloud": REC_CLOUD}


def setup(source: str = "primary", dest: str = "recovery") -> str:
    return SETUP_INTEGRATION % {"source": source, "dest": dest}


def restored(source: str = "primary", dest: str = "recovery") -> str:
    return RESTORED_INTEGRATION % {"source": source, "dest": dest}


@dataclass
class Terraform:
    """A working directory and the real `terraform` binary, pointed at one pgcrdr platform."""

    platform: RunningPlatform
    root: Path
    timings: list[tuple[str, float]] = field(default_factory=list)

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
                "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"}

    def write(self, hcl: str) -> None:
        (self.workdir / "main.tf").write_text(hcl)

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

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
