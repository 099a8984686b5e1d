"""The web console in a real browser (issue #18): Playwright for Python
driving Debian's Chromium against a running `opsloop serve`.

scripts/browser.sh sets everything up (Chromium, Playwright, axe-core, a
database and a nats-server of its own, the service) and runs this with:

  OPSLOOP_URL               the service
  OPSLOOP_TOKEN_{ALICE,BOB,CAROL,VIC}
                            alice: operator and approver, the plan's author;
                            bob, carol: approvers; vic: viewer
  CHROMIUM                  the browser binary
  AXE_JS                    axe-core's axe.min.js
  SCREENSHOTS               where the screenshots go (docs/screenshots)

The planner role is not running: alice writes the plan through the API,
so that its author is a person with a browser. Her plan restarts a
service with a script that takes 6 s, on a target the gate counts as prod
(two approvers).
"""

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

from playwright.sync_api import expect, sync_playwright

URL = os.environ["OPSLOOP_URL"]
TOKENS = {who: os.environ[f"OPSLOOP_TOKEN_{who.upper()}"] for who in ("alice", "bob", "carol", "vic")}
TENANT = "t-001"
SERVICE = f"checkout-{uuid.uuid4().hex[:6]}"
SCREENSHOTS = os.environ.get("SCREENSHOTS", "docs/screenshots")
PAGE_WEIGHT_LIMIT = 150 * 1024

checks = []


def check(name):
    """Marks a step of the test, so that a failure says which one."""

    def run(f):
        print(f"browser: {name} ...", flush=True)
        started = time.monotonic()
        f()
        checks.append(name)
        print(f"browser: ok   {name} ({time.monotonic() - started:.1f} s)", flush=True)

    return run


def api(method, path, who="alice", body=None, key=None, expect_status=None):
    request = urllib.request.Request(URL + path, method=method)
    request.add_header("Authorization", f"Bearer {TOKENS[who]}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(request, data, timeout=10) as reply:
            status, text = reply.status, reply.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    answer = json.loads(text) if text else None
    if expect_status is not None and status != expect_status:
        raise AssertionError(f"{method} {path} answered {status}, not {expect_status}: {answer}")
    return answer


def wait_until(what, probe, seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds} s waiting for {what}")
        time.sleep(0.25)


def status_of(case):
    return api("GET", f"/case/{case}")["status"]


def plan_of(case):
    return api("GET", f"/case/{case}/plan", expect_status=200)


def the_plan():
    """The shipped restart template, filled in by hand as a person would."""
    with open("templates/restart-service.json") as f:
        text = f.read().replace("{{service}}", SERVICE)
    return json.loads(text)["plan"]


def ingest_healthy_latency():
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    rows = [
        {"tenant": TENANT, "resource": SERVICE, "metric": "latency_p95_ms",
         "bucket": (now - timedelta(minutes=ago)).isoformat(), "avg": 110.0 + ago, "max": 130.0 + ago}
        for ago in range(0, 3)
    ]
    api("POST", "/metrics/ingest", body={"rows": rows}, expect_status=202)


def main():
    os.makedirs(SCREENSHOTS, exist_ok=True)
    args = ["--headless=new", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    if os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root.
        args.append("--no-sandbox")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ["CHROMIUM"], args=args)
        run(browser)
        browser.close()
    print(f"browser: all {len(checks)} checks passed")


def run(browser):
    def context(js=True):
        return browser.new_context(base_url=URL, java_script_enabled=js,
                                   viewport={"width": 1366, "height": 860})

    def sign_in(who, js=True):
        page = context(js).new_page()
        page.goto("/ui/login")
        page.get_by_label("Access token").fill(TOKENS[who])
        # The keyboard is enough: Enter submits.
        page.get_by_label("Access token").press("Enter")
        expect(page).to_have_url(re.compile(r"/ui/cases$"))
        expect(page.locator("header .who")).to_contain_text(who)
        return page

    pages = {}
    state = {}

    @check("sign-in gives the browser an opaque session cookie, never the token")
    def _():
        for who in ("alice", "bob", "carol", "vic"):
            pages[who] = sign_in(who)
        cookies = pages["bob"].context.cookies()
        assert [c["name"] for c in cookies] == ["opsloop_session"], cookies
        (cookie,) = cookies
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        assert TOKENS["bob"] not in cookie["value"], "the token itself is not the session"

    @check("a new case appears on an open case list by itself (Server-Sent Events)")
    def _():
        page = pages["bob"]
        expect(page.locator("#live")).to_contain_text("Live:", timeout=10_000)
        ingest_healthy_latency()
        case = api("POST", "/case", body={
            "title": f"{SERVICE} p95 latency above 800 ms", "tenant": TENANT, "severity": "high",
            "kind": "service", "labels": {"service": SERVICE, "env": "prod"}}, expect_status=201)["id"]
        state["case"] = case
        # No reload by the test: the page's own feed brings the row.
        expect(page.get_by_role("link", name=f"{SERVICE} p95 latency above 800 ms")).to_be_visible(timeout=15_000)
        page.screenshot(path=f"{SCREENSHOTS}/console-cases.png", full_page=True)

    case = state["case"]
    path = f"/ui/case/{case}"

    @check("the case reaches the gate with alice's plan: two approvers wanted")
    def _():
        api("PATCH", f"/case/{case}/transition", body={"event": "start_analysis"},
            key=f"browser-{uuid.uuid4()}", expect_status=200)
        wait_until("PLANNING", lambda: status_of(case) == "PLANNING")
        api("POST", f"/case/{case}/plan", body=the_plan(), expect_status=201)
        plan = wait_until("the gate's quorum", lambda: (
            (p := plan_of(case))["gate"]["required_approvers"] == 2 and status_of(case) == "WAIT_GATE" and p))
        state["digest"] = plan["dry_run"]["digest"]
        state["hash"] = plan["plan_hash"]

    @check("a page that did not follow (no script) refuses a stale approval, in words (422)")
    def _():
        stale = sign_in("carol", js=False)
        stale.goto(path)
        expect(stale.get_by_role("button", name=f"Approve plan {state['hash'][:12]}")).to_be_enabled()
        # The gate starts over on a new dry run: the page's form now names
        # an old one.
        api("POST", "/gate/eval", body={"case_id": case}, expect_status=202)
        wait_until("a new judged dry run", lambda: (
            (p := plan_of(case))["dry_run"] and p["dry_run"]["digest"] != state["digest"]
            and p["gate"]["required_approvers"] == 2 and status_of(case) == "WAIT_GATE"))
        with stale.expect_response(lambda r: r.url.endswith("/act")) as reply:
            stale.get_by_role("button", name=f"Approve plan {state['hash'][:12]}").click()
        assert reply.value.status == 422, reply.value.status
        expect(stale.get_by_role("status")).to_contain_text("Refused:")
        print(f"browser:      the stale page was told: {stale.get_by_role('status').inner_text()}")
        assert not any(a["counts"] for a in plan_of(case)["approvals"]), "nothing counted"
        stale.context.close()

    @check("a viewer sees the case and no action button")
    def _():
        page = pages["vic"]
        page.goto(path)
        expect(page.get_by_role("heading", name=re.compile(r"^Plan "))).to_be_visible()
        expect(page.locator("main button")).to_have_count(0)
        expect(page.locator("main")).to_contain_text("vic is not an approver")

    @check("the author's approve button is disabled, with the reason")
    def _():
        page = pages["alice"]
        page.goto(path)
        button = page.get_by_role("button", name=re.compile(r"^Approve plan"))
        expect(button).to_be_disabled()
        expect(page.locator("#cannot-approve")).to_contain_text("you wrote this plan and cannot approve it")
        assert button.get_attribute("aria-describedby") == "cannot-approve"

    @check("a form posted without its CSRF token is refused (403) and changes nothing")
    def _():
        page = pages["bob"]
        page.goto(path)
        page.eval_on_selector_all("form input[name=csrf]", "inputs => inputs.forEach(i => i.remove())")
        with page.expect_response(lambda r: r.url.endswith("/act")) as reply:
            page.get_by_role("button", name=re.compile(r"^Approve plan")).click()
        assert reply.value.status == 403, reply.value.status
        expect(page.locator("main")).to_contain_text("CSRF")
        assert not any(a["counts"] for a in plan_of(case)["approvals"])

    @check("the first approver reads 1 of 2")
    def _():
        page = pages["bob"]
        page.goto(path)
        page.get_by_role("button", name=re.compile(r"^Approve plan")).click()
        expect(page.get_by_role("status")).to_contain_text("1 of 2 approvals; waiting for one more approver")
        page.get_by_role("link", name="Back to the case").click()
        expect(page.locator("p.approvals")).to_contain_text("1 of 2 approvals")
        expect(page.locator("#cannot-approve")).to_contain_text("your approval already counts")

    @check("the second approver, in another browser, opens the gate: EXECUTING arrives live on the first's page")
    def _():
        watching = pages["bob"]
        expect(watching.locator("#live")).to_contain_text("Live:", timeout=10_000)
        page = pages["carol"]
        page.goto(path)
        expect(page.locator("p.approvals")).to_contain_text("1 of 2 approvals")
        page.get_by_role("button", name=re.compile(r"^Approve plan")).click()
        expect(page.get_by_role("status")).to_contain_text("EXECUTING")
        # bob's page is not touched by the test: its feed reloads it.
        expect(watching.locator("p.meta .status")).to_have_text("EXECUTING", timeout=10_000)

    @check("the case closes; its page shows the run's output and the verification chart")
    def _():
        wait_until("CLOSED", lambda: status_of(case) == "CLOSED", seconds=60)
        page = pages["bob"]
        expect(page.locator("p.meta .status")).to_have_text("CLOSED", timeout=10_000)
        expect(page.locator("#runs ~ ul pre").first).to_contain_text(f"restarted {SERVICE}")
        expect(page.locator("svg line.threshold")).to_have_count(1)
        # Drawn, not only present: an SVG element left open in HTML swallows
        # the ones after it, which then have no box.
        expect(page.locator("svg .point").first).to_be_visible()
        expect(page.locator("svg text.label")).to_have_text("300")
        expect(page.locator("main")).to_contain_text(f"avg of latency_p95_ms of {SERVICE} < 300 over 60 s")
        page.screenshot(path=f"{SCREENSHOTS}/console-case.png", full_page=True)

    @check("every action from the console is in the timeline under the person's identity")
    def _():
        entries = api("GET", f"/case/{case}/timeline?limit=200")["items"]
        by_console = [(e["actor"], e["event"], e["kind"]) for e in entries
                      if (e.get("meta") or {}).get("request", {}).get("via") == "console"]
        assert ("carol", "gate_approved", "rejected") in by_console, by_console
        assert ("bob", "gate_vote", "transition") in by_console, by_console
        assert ("carol", "gate_approved", "transition") in by_console, by_console
        assert all(actor in ("bob", "carol") for actor, _, _ in by_console), by_console

    @check(f"the case page weighs under {PAGE_WEIGHT_LIMIT // 1024} KB with its plan, runs and chart")
    def _():
        page = context().new_page()
        page.context.add_cookies(pages["bob"].context.cookies())
        sizes = []
        page.on("requestfinished", lambda r: sizes.append((r.url, r.sizes()["responseBodySize"]
                                                           + r.sizes()["responseHeadersSize"])))
        page.goto(path, wait_until="load")
        page.wait_for_timeout(500)
        total = sum(n for _, n in sizes)
        for url, n in sizes:
            print(f"browser:      {n:>7} B  {url.replace(URL, '')}")
        print(f"browser:      case page, everything it loads: {total} B in {len(sizes)} requests")
        assert total < PAGE_WEIGHT_LIMIT, total
        page.context.close()

    @check("axe-core finds no serious or critical accessibility violation on the list and the case page")
    def _():
        # axe is injected into the page, which the console's CSP (no
        # inline script) rightly refuses: this one context bypasses it.
        page = browser.new_context(base_url=URL, bypass_csp=True).new_page()
        page.context.add_cookies(pages["bob"].context.cookies())
        for where in ("/ui/cases", path):
            page.goto(where)
            page.add_script_tag(path=os.environ["AXE_JS"])
            result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
            found = [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]]
            print(f"browser:      axe on {where.split('/')[2]}: {len(result['passes'])} rules pass, violations {found or 'none'}")
            serious = [v for v in found if v[1] in ("serious", "critical")]
            assert not serious, serious


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"browser: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
