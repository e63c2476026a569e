"""The seed's Console tab, end to end in Debian's Chromium, against a real pgcrdr with real
clusters: sign in, create a recovery service, initiate a failover, then the seed's failback
steps word for word ("Disaster recovery" > "Actions" > "Failback to primary region" >
"Restore primary service" > "Promote primary to active" > "Done"), checking after each step
both what the page shows and what the API reports.

The tests in this module run in order and share one platform, one browser tab and one pair.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from playwright.sync_api import expect

from tests.helpers import RunningPlatform, wait_for

if TYPE_CHECKING:
    from tests.browser.conftest import Console

PROJECT = "pgcrdr"
PRI, REC = "pg-web", "pg-web-dr"
PRI_CLOUD, REC_CLOUD = "local-europe-west1", "local-us-east1"

# Bounds of the waits below (real clusters on a 2-core machine; measured a few seconds each,
# the bounds leave room for a loaded machine).
BUILD_S = 240  # a service or a recovery copy built from nothing
OPERATION_S = 120  # a failover, a restore or a planned switch


def state_role(p: RunningPlatform, name: str) -> dict:
    """What the API says: {state, disaster_recovery_role} (the seed's jq filter)."""
    svc = p.service(PROJECT, name)
    return {"state": svc["state"], "disaster_recovery_role": svc["disaster_recovery_role"]}


def wait_idle(p: RunningPlatform) -> dict:
    """Wait until no operation runs on the pair; returns its disaster-recovery status."""
    def idle() -> dict | None:
        with p.api() as c:
            d = c.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").json()
        return d if d["operation"] is None else None
    return wait_for("the pair's operation to finish", idle, timeout=OPERATION_S)


def labels(c: Console, primary: str, recovery: str, timeout: float = OPERATION_S, wizard: bool = False) -> None:
    """The pair as the page draws it: the primary and recovery labels (Active/Passive/Failed/Rebuilding)."""
    prefix = "wizard-" if wizard else ""
    expect(c.page.get_by_test_id(f"{prefix}primary-label")).to_have_text(primary, timeout=timeout * 1000)
    expect(c.page.get_by_test_id(f"{prefix}recovery-label")).to_have_text(recovery, timeout=timeout * 1000)
    expect(c.page.get_by_test_id("last-problem")).to_be_hidden()  # no operation failed on the way


# Words the API uses for nodes that a person should not have to read (shown in words instead).
RAW_WORDS = re.compile(r"syncing_data|leaving|master|finalize: done|prepare: 0 %")
# One duration format: "543 ms" below 1 s, "1.25 s" / "12.5 s" above.
DURATION = re.compile(r"^(\d{1,3} ms|\d+\.\d{1,2} s|–)$")


def no_raw_words(c: Console) -> None:
    for where in ("#pair", "#cycle-dialog"):
        text = c.page.locator(where).inner_text()
        assert not RAW_WORDS.search(text), f"{where}: {text}"


def open_actions(c: Console) -> None:
    c.page.get_by_role("button", name="Actions").click()
    expect(c.page.get_by_role("menu", name="Actions")).to_be_visible()


def test_sign_in_failure_says_why(console: Console):
    c, page = console, console.page
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in to pgcrdr")).to_be_visible()
    c.watch.expect_refusal(403, "/v1/me")
    page.get_by_label("API token").fill("not-a-valid-token")
    page.get_by_role("button", name="Sign in with token").click()
    expect(page.get_by_role("alert")).to_have_text("Sign-in failed: Invalid or expired API token")
    c.shot("sign-in-bad-token")
    c.watch.expect_refusal(403, "/v1/userauth")
    page.get_by_label("Email").fill(c.platform.admin_email)
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text("Sign-in failed: Authentication failed")
    assert page.url.endswith("/"), "a failed sign-in stays on the sign-in page"


def test_sign_in_and_see_the_services(console: Console):
    c, page, p = console, console.page, console.platform
    with p.api() as api:
        r = api.post(f"/v1/project/{PROJECT}/service", json={
            "service_name": PRI, "service_type": "pg", "plan": "startup-4", "cloud": PRI_CLOUD, "user_config": {}})
        assert r.status_code == 200, r.text
    # Email and password
    page.goto("/")
    page.get_by_label("Email").fill(p.admin_email)
    page.get_by_label("Password").fill(p.admin_password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page).to_have_url(f"{p.api_url}/console/project/{PROJECT}")
    row = page.locator(f"#services tr[data-service='{PRI}']")
    expect(row).to_contain_text("startup-4")
    expect(row.get_by_test_id("state")).to_have_text("RUNNING", timeout=BUILD_S * 1000)  # live: no reload
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": None}
    c.shot("services")
    # Sign out, then in again with the API token
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to pgcrdr")).to_be_visible()
    page.get_by_label("API token").fill(p.token)
    page.get_by_role("button", name="Sign in with token").click()
    expect(page).to_have_url(f"{p.api_url}/console/project/{PROJECT}")
    expect(row.get_by_test_id("state")).to_have_text("RUNNING")


def test_service_page(console: Console):
    c, page, p = console, console.page, console.platform
    page.get_by_role("link", name=PRI).click()
    expect(page.get_by_test_id("service-state")).to_have_text("RUNNING")
    password = p.service(PROJECT, PRI)["service_uri_params"]["password"]
    uri = page.get_by_test_id("service-uri")
    expect(uri).to_contain_text("postgres://avnadmin:••••••••@")
    expect(uri).not_to_contain_text(password)
    expect(page.get_by_test_id("pooled-uri")).to_contain_text("••••••••")
    # a service is RUNNING only once its first backup exists: the page lists it with its region
    [first, *_] = p.service(PROJECT, PRI)["backups"]
    backups = page.locator("#svc-backups")
    expect(backups).to_contain_text(first["backup_name"])
    expect(backups).to_contain_text(first["storage_location"])
    expect(page.locator("#svc-nodes tbody tr")).to_have_count(1)
    expect(page.get_by_test_id("service-events")).to_contain_text("service_create")  # its recent events
    page.get_by_role("button", name="Show password").click()
    expect(uri).to_contain_text(password)
    c.shot("service-page-password-shown")
    page.get_by_role("button", name="Hide password").click()
    expect(uri).not_to_contain_text(password)


def test_create_recovery_service(console: Console):
    c, page, p = console, console.page, console.platform
    page.get_by_role("link", name="Disaster recovery").click()
    expect(page.get_by_role("heading", name="Cross-region disaster recovery")).to_be_visible()
    expect(page.get_by_role("button", name="Actions")).to_be_hidden()  # nothing to act on without a pair
    page.get_by_role("button", name="Create recovery service").click()
    dialog = page.get_by_role("dialog", name="Create recovery service")
    expect(dialog.get_by_label("Service name")).to_have_value(f"{PRI}-dr")
    # A refused request shows the server's message and changes nothing.
    c.watch.expect_refusal(409, f"/v1/project/{PROJECT}/service")
    dialog.get_by_label("Service name").fill(PRI)
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.get_by_role("alert")).to_contain_text(f"Service {PRI} already exists")
    c.shot("create-recovery-refused")
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": None}
    dialog.get_by_label("Service name").fill(REC)
    dialog.get_by_label("Cloud region").select_option(REC_CLOUD)
    c.shot("create-recovery-form")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("recovery-name")).to_have_text(REC)
    expect(page.get_by_test_id("primary-label")).to_have_text("Active")
    assert state_role(p, REC)["disaster_recovery_role"] == "passive"
    labels(c, "Active", "Passive", timeout=BUILD_S)
    expect(page.get_by_test_id("replication-direction")).to_have_text(f"{PRI} → {REC}")
    expect(page.get_by_role("button", name="Create recovery service")).to_be_hidden()
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    c.shot("pair-created")


def test_only_sensible_actions_are_offered(console: Console):
    page = console.page
    open_actions(console)
    menu = page.get_by_role("menu", name="Actions")
    expect(menu.get_by_role("menuitem", name="Switchover to recovery service")).to_be_visible()
    expect(menu.get_by_role("menuitem", name="Manage")).to_be_visible()
    expect(menu.get_by_role("menuitem", name="Failback to primary region")).to_be_hidden()
    expect(menu.get_by_role("menuitem", name="Switchback to primary service")).to_be_hidden()
    console.shot("actions-menu")
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    open_actions(console)
    page.get_by_role("heading", name="Cross-region disaster recovery").click()  # a click elsewhere closes it
    expect(menu).to_be_hidden()


def test_initiate_failover(console: Console):
    c, page, p = console, console.page, console.platform
    open_actions(c)
    page.get_by_role("menuitem", name="Manage").click()
    page.get_by_role("menuitem", name="Service recovery cycle").click()
    wizard = page.get_by_role("dialog", name="Service recovery cycle")
    expect(wizard).to_be_visible()
    expect(wizard.get_by_role("button", name="Restore primary service")).to_be_disabled()
    c.shot("recovery-cycle-before-failover")
    wizard.get_by_role("button", name="Initiate failover").click()
    labels(c, "Failed", "Active", wizard=True)
    wait_idle(p)
    assert state_role(p, PRI) == {"state": "POWEROFF", "disaster_recovery_role": "failed"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    expect(wizard.get_by_role("button", name="Restore primary service")).to_be_enabled()
    c.shot("failed-over")
    wizard.get_by_role("button", name="Close").click()
    expect(wizard).to_be_hidden()
    labels(c, "Failed", "Active")
    expect(page.get_by_test_id("replication-direction")).to_have_text("no replication")


def test_failback_as_the_seed_console_tab(console: Console):
    c, page, p = console, console.page, console.platform
    # 1. Go to your primary service.
    page.goto(f"/console/project/{PROJECT}")
    page.get_by_role("link", name=PRI, exact=True).click()
    expect(page.get_by_test_id("service-state")).to_have_text("POWEROFF")
    # The failed primary says where its Service URI leads now, and that its nodes are off.
    expect(page.get_by_test_id("service-uri-note")).to_contain_text(
        f"The Service URI now reaches the recovery service {REC}, which is active")
    expect(page.get_by_test_id("standby-uris")).to_have_text("none (the service is powered off)")
    expect(page.get_by_test_id("node-state").first).to_have_text("powered off")
    c.shot("failed-primary-overview")
    # 2. Click "Disaster recovery" in the sidebar.
    page.get_by_role("navigation", name="Service").get_by_role("link", name="Disaster recovery").click()
    # 3. On the "Cross-region disaster recovery" page, click Actions > "Failback to primary region".
    expect(page.get_by_role("heading", name="Cross-region disaster recovery")).to_be_visible()
    labels(c, "Failed", "Active")
    open_actions(c)
    page.get_by_role("menuitem", name="Failback to primary region").click()
    # 4. In the "Service recovery cycle" wizard:
    wizard = page.get_by_role("dialog", name="Service recovery cycle")
    expect(wizard).to_be_visible()
    expect(wizard.get_by_role("button", name="Promote primary to active")).to_be_disabled()
    c.shot("failback-wizard")
    # 4.1 Click "Restore primary service": it replaces the primary's data, so the console asks
    # first (its own dialog); Cancel changes nothing.
    wizard.get_by_role("button", name="Restore primary service").click()
    confirm = page.get_by_role("dialog", name="Restore primary service")
    expect(confirm).to_contain_text(f"This replaces the data of {PRI} with a copy of {REC}")
    c.shot("restore-confirm")
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    expect(wizard).to_be_visible()
    assert state_role(p, PRI) == {"state": "POWEROFF", "disaster_recovery_role": "failed"}
    wizard.get_by_role("button", name="Restore primary service").click()
    confirm.get_by_role("button", name="Restore", exact=True).click()
    expect(confirm).to_be_hidden()
    # The primary shows Rebuilding until it is Passive.
    expect(wizard.get_by_test_id("wizard-primary-label")).to_have_text("Rebuilding")
    assert state_role(p, PRI) == {"state": "REBUILDING", "disaster_recovery_role": "passive"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    expect(wizard.locator("[data-step=restore] .step-progress")).to_contain_text("Rebuilding")
    c.shot("restore-rebuilding")
    no_raw_words(c)
    labels(c, "Passive", "Active", wizard=True, timeout=BUILD_S)
    wait_idle(p)
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    c.shot("restore-passive")
    # 4.2 Click "Promote primary to active": primary Active, recovery Passive.
    wizard.get_by_role("button", name="Promote primary to active").click()
    labels(c, "Active", "Passive", wizard=True)
    # Once the roles flipped, nothing says the pair has no writer.
    for where in (wizard.locator(".cycle-operation"), page.locator("#pair")):
        expect(where).not_to_contain_text("no writer")
        expect(where).not_to_contain_text("no node takes writes")
    wait_idle(p)
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    expect(wizard.get_by_role("button", name="Done", exact=True)).to_be_enabled()
    c.shot("promoted")
    # 4.3 Click "Done".
    wizard.get_by_role("button", name="Done", exact=True).click()
    expect(wizard).to_be_hidden()
    labels(c, "Active", "Passive")
    expect(page.get_by_test_id("replication-direction")).to_have_text(f"{PRI} → {REC}")
    no_raw_words(c)
    c.shot("failback-done")


def test_history_and_lag_chart(console: Console):
    c, page, p = console, console.page, console.platform
    history = page.locator("#history-table tbody tr")
    kinds = [history.nth(i).get_attribute("data-kind") for i in range(history.count())]
    assert kinds == ["failback_promote", "failback_restore", "failover", "setup"], kinds
    failover = page.locator("#history-table tr[data-kind=failover]")
    expect(failover.get_by_test_id("data-given-up")).not_to_have_text("–")
    expect(failover.get_by_test_id("write-pause")).not_to_have_text("–")
    promote = page.locator("#history-table tr[data-kind=failback_promote]")
    expect(promote.get_by_test_id("write-pause")).to_contain_text("s")
    promote.locator("summary").click()  # the steps with their durations
    expect(promote.locator("details li").first).to_contain_text("done in")
    # One duration format everywhere, to the millisecond (a failover is not "0 ms").
    for cell in page.locator("#history-table [data-testid=duration], #history-table [data-testid=write-pause]").all():
        assert DURATION.match(cell.inner_text()), cell.inner_text()
    assert failover.get_by_test_id("duration").inner_text() not in ("0 ms", "–")
    with p.api() as api:
        ops = api.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").json()["history"]
    failover_api = next(o for o in ops if o["kind"] == "failover")
    assert failover_api["data_loss"] is not None
    chart = page.get_by_role("img", name="Replication lag in bytes over recent minutes")
    expect(chart).to_be_visible()
    wait_for("lag samples drawn in the chart",
             lambda: int(chart.get_attribute("data-samples") or 0) > 3, timeout=30)
    assert chart.locator("polyline").count() >= 1
    # Scaled to the highest sample with headroom: the line never runs along the top of the chart.
    peak, top = float(chart.get_attribute("data-peak")), float(chart.get_attribute("data-axis-max"))
    assert peak * 1.1 <= top <= max(1024, peak) * 3, (peak, top)
    c.shot("history-and-lag")


def test_refused_action_shows_the_server_message(console: Console):
    """A switchback confirmed in the page after the API was used behind its back: the server refuses
    it (another operation runs on the pair) and the page shows the server's message."""
    c, page, p = console, console.page, console.platform
    open_actions(c)
    page.get_by_role("menuitem", name="Switchover to recovery service").click()
    confirm = page.get_by_role("dialog", name="Switchover to recovery service")
    confirm.get_by_role("button", name="Switchover").click()
    expect(confirm).to_be_hidden()
    labels(c, "Passive", "Active")
    wait_idle(p)
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "passive"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    open_actions(c)
    page.get_by_role("menuitem", name="Switchback to primary service").click()
    confirm = page.get_by_role("dialog", name="Switchback to primary service")
    expect(confirm).to_be_visible()
    with p.api() as api:  # behind the console's back: the recovery service asks to become passive
        r = api.put(f"/v1/project/{PROJECT}/service/{REC}", json={"disaster_recovery_role": "passive"})
        assert r.status_code == 200, r.text
    c.watch.expect_refusal(409, f"/v1/project/{PROJECT}/service/{PRI}")
    confirm.get_by_role("button", name="Switchback").click()
    expect(confirm.get_by_role("alert")).to_contain_text("operation is already running on the pair")
    with p.api() as api:
        running = api.get(f"/v1/project/{PROJECT}/service/{PRI}/disaster-recovery").json()["operation"]
    assert running is None or running["service"] == REC, json.dumps(running)
    c.shot("refused-switchback")
    confirm.get_by_role("button", name="Cancel").click()
    labels(c, "Active", "Passive")
    wait_idle(p)
    assert state_role(p, PRI) == {"state": "RUNNING", "disaster_recovery_role": "active"}
    assert state_role(p, REC) == {"state": "RUNNING", "disaster_recovery_role": "passive"}


def test_undone_repair_and_unknown_loss_are_shown(console: Console):
    """Cases this pair did not go through, drawn by the page from the view model: the view model's
    answer is extended (Playwright route) with an undone switchover, a repair and a failover whose
    data given up is unknown; the real page must show each."""
    c, page = console, console.page
    view_url = f"**/console/api/project/{PROJECT}/service/{PRI}/disaster-recovery"
    base = {"service": PRI, "requested_role": "active", "create_time": "2025-01-01T00:00:00Z",
            "finish_time": "2025-01-01T00:00:01Z", "write_pause_s": None, "data_loss": None, "details": {},
            "steps": [{"name": "settle", "state": "done", "started": None, "finished": None, "duration_s": 0.0123,
                       "detail": None}]}
    extra = [
        {**base, "operation_id": "t-undone", "kind": "switchover", "from": PRI, "to": REC, "state": "undone",
         "message": f"switchover undone, {PRI} stays the writer: pooled writes were held 5 s (the pause deadline)",
         "write_pause_s": 5.0004, "duration_s": 5.4321},
        {**base, "operation_id": "t-repair", "kind": "repair", "from": PRI, "to": PRI, "state": "done",
         "message": None, "write_pause_s": 0.7, "duration_s": 0.912},
        {**base, "operation_id": "t-lost", "kind": "failover", "from": PRI, "to": REC, "state": "done",
         "message": None, "write_pause_s": 0.25, "duration_s": 1.5,
         "data_loss": {"known": False, "bytes": None, "lower_bound_bytes": 2048, "primary_last_seen_age_s": 3.2}},
    ]

    def extend(route):
        resp = route.fetch()
        body = resp.json()
        body["history"] = extra + body["history"]
        route.fulfill(response=resp, json=body)

    page.route(view_url, extend)
    try:
        undone = page.locator("#history-table tr[data-kind=switchover]").filter(has_text="undone").first
        expect(undone.get_by_test_id("result")).to_have_text(
            f"undone — switchover undone, {PRI} stays the writer: pooled writes were held 5 s (the pause deadline)")
        expect(undone.get_by_test_id("duration")).to_have_text("5.43 s")
        repair = page.locator("#history-table tr[data-kind=repair]")
        expect(repair).to_contain_text("Repair: no node took writes")
        expect(repair.get_by_test_id("duration")).to_have_text("912 ms")
        lost = page.locator("#history-table tr[data-kind=failover]").first
        expect(lost.get_by_test_id("data-given-up")).to_have_text(
            "unknown (at least 2.0 kB, from a position seen 3.20 s before)")
        c.shot("history-undone-repair-unknown-loss")
    finally:
        page.unroute(view_url, extend)
