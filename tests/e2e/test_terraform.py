"""The seed's Terraform tab, with the real `terraform` binary and pgcrdr's aiven/aiven provider
(installed by `pgcrdr terraform install`) against real clusters, running the files of
``examples/terraform/`` as shipped (copied unchanged; only variables set, as TF_VAR_*):

setup (``examples/terraform/setup``) -> failover by API -> failback (``examples/terraform/failback``,
the seed: import both services with ``services.tf``, then the whole example: re-establish the
integration with the primary as source, apply, output) -> switchover by reversing the
integration (the one edit a user makes) -> switchback (the example again) -> a second failover by
API, failed back by applying the unchanged example (an in-place update) -> refused changes ->
destroy.

After every step the roles and states are checked through the API, and `terraform plan
-detailed-exitcode` must report no changes when the configuration matches reality.
The tests in this module run in order and share one pair of services.
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from tests.helpers import RunningPlatform, wait_for
from tests.terraform_helpers import PRI_CLOUD, PROJECT, REC_CLOUD, Terraform, reverse_integration

PRI, REC = "tf-primary", "tf-primary-dr"
# The failback example's first step alone: the services, to import them.
FAILBACK_STEP1 = ("versions.tf", "variables.tf", "services.tf")


@pytest.fixture(scope="module")
def tf(platform: RunningPlatform):
    t = Terraform.create(platform)
    t.variables = {"project_name": PROJECT, "primary_service_name": PRI, "recovery_service_name": REC,
                   "primary_cloud_region": PRI_CLOUD, "recovery_cloud_region": REC_CLOUD}
    try:
        yield t
    finally:
        # Leave nothing behind for the next tests on the shared platform, even after a failure.
        with platform.api() as c:
            for name in (REC, "tf-bad", PRI):
                c.delete(f"/v1/project/{PROJECT}/service/{name}")
        t.cleanup()


def roles(p: RunningPlatform) -> dict[str, tuple[str, str]]:
    out = {}
    for name in (PRI, REC):
        svc = p.service(PROJECT, name)
        out[name] = (svc["state"], svc["disaster_recovery_role"])
    return out


def integrations(p: RunningPlatform) -> list[tuple[str, str]]:
    with p.api() as c:
        items = c.get(f"/v1/project/{PROJECT}/service/{PRI}/integration").json()["service_integrations"]
    return [(i["source_service"], i["dest_service"]) for i in items]


def rows(p: RunningPlatform) -> set[str]:
    with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], connect_timeout=10) as conn:
        return {r[0] for r in conn.execute("SELECT step FROM tf_steps")}


def write_row(p: RunningPlatform, step: str) -> None:
    with psycopg.connect(p.service(PROJECT, PRI)["service_uri"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS tf_steps (step text primary key)")
        conn.execute("INSERT INTO tf_steps VALUES (%s)", (step,))


def output_status(tf: Terraform) -> dict:
    return json.loads(tf.run("output", "-json", "disaster_recovery_status", step="output").stdout)


def test_setup_with_the_crdr_setup_page_hcl(tf: Terraform, platform: RunningPlatform):
    assert tf.use_example("setup") == ["main.tf", "outputs.tf", "variables.tf", "versions.tf"]
    tf.apply("setup: apply")
    # apply returned once the pair was in place: no waiting here.
    assert roles(platform) == {PRI: ("RUNNING", "active"), REC: ("RUNNING", "passive")}
    assert integrations(platform) == [(PRI, REC)]
    shown = tf.run("state", "show", "aiven_service_integration.disaster_recovery", step="state show").stdout
    assert re.search(rf'source_service_name\s+= "{PRI}"', shown), shown
    tf.plan_is_empty("setup: plan")
    assert output_status(tf) == {PRI: {"state": "RUNNING", "disaster_recovery_role": "active"},
                                 REC: {"state": "RUNNING", "disaster_recovery_role": "passive"}}
    write_row(platform, "setup")


def test_failover_by_api(tf: Terraform, platform: RunningPlatform):
    with platform.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{PRI}", json={"disaster_recovery_role": "failed"})
        assert r.status_code == 200, r.text
    wait_for("the failover: primary POWEROFF/failed, recovery RUNNING/active",
             lambda: roles(platform) == {PRI: ("POWEROFF", "failed"), REC: ("RUNNING", "active")}, timeout=180)
    assert integrations(platform) == [(REC, PRI)]  # the integration follows the roles
    write_row(platform, "failover")
    # The configuration now says the primary should be active: the plan is the failback, as an
    # in-place update of the integration (never a destroy and re-create).
    proc = tf.run("plan", "-detailed-exitcode", step="failover: plan (drift)", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "aiven_service_integration.disaster_recovery will be updated in-place" in proc.stdout, proc.stdout
    assert "0 to add, 1 to change, 0 to destroy" in proc.stdout
    # A configuration that matches reality (recovery active) plans nothing.
    # (Only the example's output changes: it reads the roles the failover set.)
    tf.write(reverse_integration(tf.read("main.tf")))
    tf.plan_changes_no_resource("failover: plan (config reversed)")


def test_failback_as_the_seed_says(tf: Terraform, platform: RunningPlatform):
    # The Terraform state was lost in the disaster.
    for addr in ("aiven_service_integration.disaster_recovery", "aiven_postgresql.primary",
                 "aiven_postgresql.recovery"):
        tf.run("state", "rm", addr, step="state rm")
    # 1. Ensure both services exist and are healthy; re-import them.
    tf.use_example("failback", *FAILBACK_STEP1)
    tf.run("import", "aiven_postgresql.primary", f"{PROJECT}/{PRI}", step="failback: import primary")
    tf.run("import", "aiven_postgresql.recovery", f"{PROJECT}/{REC}", step="failback: import recovery")
    tf.plan_is_empty("failback: plan after import")
    # 2. Re-establish CRDR with the original primary as active. 3. Apply.
    tf.use_example("failback")
    tf.apply("failback: apply")
    assert roles(platform) == {PRI: ("RUNNING", "active"), REC: ("RUNNING", "passive")}
    assert integrations(platform) == [(PRI, REC)]
    # 4. Verify the failback.
    seed_style = tf.run("output", "disaster_recovery_status", step="output")
    assert '"disaster_recovery_role" = "active"' in seed_style.stdout, seed_style.stdout
    assert output_status(tf) == {PRI: {"state": "RUNNING", "disaster_recovery_role": "active"},
                                 REC: {"state": "RUNNING", "disaster_recovery_role": "passive"}}
    tf.plan_is_empty("failback: plan")
    assert rows(platform) == {"setup", "failover"}  # written before and after the failover
    write_row(platform, "failback")


def test_switchover_by_reversing_the_integration(tf: Terraform, platform: RunningPlatform):
    tf.write(reverse_integration(tf.read("failback.tf")), "failback.tf")
    proc = tf.run("plan", step="switchover: plan")
    assert "0 to add, 1 to change, 0 to destroy" in proc.stdout, proc.stdout
    tf.apply("switchover: apply")
    assert roles(platform) == {PRI: ("RUNNING", "passive"), REC: ("RUNNING", "active")}
    assert integrations(platform) == [(REC, PRI)]
    assert output_status(tf) == {PRI: {"state": "RUNNING", "disaster_recovery_role": "passive"},
                                 REC: {"state": "RUNNING", "disaster_recovery_role": "active"}}
    tf.plan_is_empty("switchover: plan after")
    assert rows(platform) == {"setup", "failover", "failback"}


def test_switchback(tf: Terraform, platform: RunningPlatform):
    tf.use_example("failback")
    tf.apply("switchback: apply")
    assert roles(platform) == {PRI: ("RUNNING", "active"), REC: ("RUNNING", "passive")}
    assert integrations(platform) == [(PRI, REC)]
    tf.plan_is_empty("switchback: plan")


def test_failback_by_applying_the_unchanged_configuration(tf: Terraform, platform: RunningPlatform):
    """A second failover by API; the example still says the primary is active, so `apply` of the
    unchanged files alone performs the failback (restore, then promote) as an in-place update."""
    write_row(platform, "switchback")
    with platform.api() as c:
        r = c.put(f"/v1/project/{PROJECT}/service/{PRI}", json={"disaster_recovery_role": "failed"})
        assert r.status_code == 200, r.text
    wait_for("the second failover",
             lambda: roles(platform) == {PRI: ("POWEROFF", "failed"), REC: ("RUNNING", "active")}, timeout=180)
    proc = tf.apply("failback in place: apply")
    assert "0 added, 1 changed, 0 destroyed" in proc.stdout, proc.stdout
    assert roles(platform) == {PRI: ("RUNNING", "active"), REC: ("RUNNING", "passive")}
    assert integrations(platform) == [(PRI, REC)]
    tf.plan_is_empty("failback in place: plan")
    assert rows(platform) == {"setup", "failover", "failback", "switchback"}


def test_refused_changes_fail_with_the_servers_message_and_change_nothing(tf: Terraform, platform: RunningPlatform):
    tf.use_example("failback")
    before = {n: platform.service(PROJECT, n)["plan"] for n in (PRI, REC)}
    # A plan that does not exist, with the real provider's resource name.
    tf.write('resource "aiven_pg" "bad" {\n  project = var.project_name\n  service_name = "tf-bad"\n'
             '  plan = "nope-4"\n  cloud_name = var.primary_cloud_region\n}\n', "extra.tf")
    proc = tf.run("apply", "-auto-approve", step="refused: bad plan", check=False)
    assert proc.returncode == 1
    assert "Plan 'nope-4' is not available for service type pg" in proc.stderr, proc.stderr
    with platform.api() as c:
        assert c.get(f"/v1/project/{PROJECT}/service/tf-bad").status_code == 404
    # Another DR peer for a service that already has one.
    tf.write('resource "aiven_service_integration" "third" {\n  project = var.project_name\n'
             '  integration_type = "disaster_recovery"\n'
             '  source_service_name = aiven_postgresql.recovery.service_name\n'
             '  destination_service_name = "tf-nowhere"\n}\n', "extra.tf")
    proc = tf.run("apply", "-auto-approve", step="refused: bad integration", check=False)
    assert proc.returncode == 1
    assert "Service tf-nowhere does not exist" in proc.stderr, proc.stderr
    tf.remove("extra.tf")
    # A plan change the server cannot do (1 node -> 2 nodes): the example's own variable.
    proc = tf.run("apply", "-auto-approve", "-var", "service_plan=business-4", step="refused: plan change",
                  check=False)
    assert proc.returncode == 1
    assert "is not supported yet" in proc.stderr, proc.stderr
    assert {n: platform.service(PROJECT, n)["plan"] for n in (PRI, REC)} == before
    assert roles(platform) == {PRI: ("RUNNING", "active"), REC: ("RUNNING", "passive")}
    assert integrations(platform) == [(PRI, REC)]
    tf.plan_is_empty("refused: plan")
    # Imports that cannot work say why.
    tf.write('resource "aiven_pg" "other" {\n  project = var.project_name\n  service_name = "tf-nope"\n'
             '  plan = "startup-4"\n}\n', "extra.tf")
    proc = tf.run("import", "aiven_pg.other", PROJECT, step="refused: import", check=False)
    assert proc.returncode == 1 and "expected PROJECT/SERVICE_NAME" in proc.stderr, proc.stderr
    proc = tf.run("import", "aiven_pg.other", f"{PROJECT}/tf-nope", step="refused: import", check=False)
    assert proc.returncode == 1 and "Service tf-nope does not exist" in proc.stderr, proc.stderr
    tf.remove("extra.tf")


def test_automatic_failover_is_set_through_the_integration(tf: Terraform, platform: RunningPlatform):
    """pgcrdr's extension attributes on the disaster_recovery integration: a grace period is kept;
    enabling it is refused with the server's reason here (the embedded default has no writer
    leases) and changes nothing."""
    tf.use_example("failback")
    base = tf.read("failback.tf")
    anchor = 'destination_service_name = aiven_postgresql.recovery.service_name # Back to passive role\n'
    assert anchor in base
    tf.write(base.replace(anchor, anchor + "  automatic_failover_enabled = false\n"
                                           "  automatic_failover_grace_seconds = 45\n"), "failback.tf")
    tf.apply("automatic failover: grace")
    with platform.api() as c:
        cfg = c.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").json()["automatic_failover"]
    assert cfg["enabled"] is False and cfg["grace_seconds"] == 45
    shown = tf.run("state", "show", "aiven_service_integration.disaster_recovery_restored", step="state show").stdout
    assert "automatic_failover_grace_seconds" in shown and "45" in shown
    tf.plan_is_empty("automatic failover: plan")
    tf.write(base.replace(anchor, anchor + "  automatic_failover_enabled = true\n"), "failback.tf")
    proc = tf.run("apply", "-auto-approve", step="automatic failover: refused", check=False)
    assert proc.returncode == 1 and "needs writer leases" in proc.stderr, proc.stderr
    with platform.api() as c:
        assert c.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").json()["automatic_failover"] == cfg
    tf.write(base, "failback.tf")


def test_destroy(tf: Terraform, platform: RunningPlatform):
    tf.run("destroy", "-auto-approve", step="destroy")
    with platform.api() as c:
        for name in (PRI, REC):
            assert c.get(f"/v1/project/{PROJECT}/service/{name}").status_code == 404
    assert tf.run("state", "list", step="state list").stdout.strip() == ""
