"""Install the provider for the current user: a wrapper executable plus a Terraform CLI config.

Terraform finds the provider through ``dev_overrides`` (no registry, no ``terraform init``):

    provider_installation {
      dev_overrides { "aiven/aiven" = "DIR/plugins" }
      direct {}
    }

The executable must be named ``terraform-provider-aiven*``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

EXECUTABLE = "terraform-provider-aiven"


def default_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pgcrdr" / "terraform"


@dataclass(frozen=True)
class Installed:
    executable: Path
    cli_config: Path


def _hcl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def install(directory: Path, python: str | None = None) -> Installed:
    directory = directory.expanduser().resolve()
    plugins = directory / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    exe = plugins / EXECUTABLE
    py = python or sys.executable
    exe.write_text(f'#!/bin/sh\n# pgcrdr\'s aiven/aiven provider for Terraform\nexec "{py}" -m pgcrdr.terraform "$@"\n')
    exe.chmod(0o755)
    config = directory / "terraform.rc"
    config.write_text(
        "# Written by `pgcrdr terraform install`: use with TF_CLI_CONFIG_FILE.\n"
        "provider_installation {\n"
        "  dev_overrides {\n"
        f"    \"aiven/aiven\" = {_hcl_string(str(plugins))}\n"
        "  }\n"
        "  direct {}\n"
        "}\n"
    )
    return Installed(executable=exe, cli_config=config)
