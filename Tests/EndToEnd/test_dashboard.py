"""The burn-down dashboard in a real browser: headless Chromium loads /dashboard from a running
tollgated while a load spends credits, and the numbers on the page are checked against the read
API — bracketed by reads before and after while credits burn, and equal once the load stops.
A screenshot is saved to .build/artifacts/ (or $TOLLGATE_ARTIFACTS)."""

import threading
import time

import pytest

from conftest import fixtures, read_api

RATE = 7


def provision(client):
    client.set_rate("ai.summary", RATE)
    client.create_account("acme")
    for member in ("ana", "ben", "cy", "dee"):
        client.add_member("acme", member)
    client.set_subscription("acme", {"credits_per_seat": 100})
    client.set_seats("acme", 4)
    client.add_grant("acme", 100_000, priority=100, source="top-up")
    client.set_member_cap("acme", "dee", 50)
    client.set_alert("acme", "low", ("credits", 99_000))
    client.set_alert("acme", "empty", "depleted")
    # Long holds, open through the whole test.
    for _ in range(3):
        client.reserve("ai.summary", 1, account="acme", member="ana", ttl=3_600)


class Load:
    """Spends from four members in a loop (dee runs into her cap; every 25th spend asks for
    more than the account has), until stopped."""

    def __init__(self, server):
        self.client = server.client()
        self.stop = threading.Event()
        self.spends = 0
        self.refusals = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        members = ["ana", "ben", "cy", "dee"]
        count = 0
        while not self.stop.is_set():
            count += 1
            quantity = 1_000_000 if count % 25 == 0 else 1
            try:
                self.client.spend("ai.summary", quantity, account="acme", member=members[count % 4])
                self.spends += 1
            except fixtures.tollgate.Refused:
                self.refusals += 1
            time.sleep(0.004)

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        self.client.close()


PAGE = """JSON.stringify({
  at: Number(document.getElementById('detail').dataset.at || 0),
  account: document.getElementById('detail').dataset.account,
  balance: document.getElementById('balance').dataset.value,
  allotment: document.getElementById('allotment').dataset.value,
  burnMinute: document.getElementById('burn-minute').dataset.value,
  burnHour: document.getElementById('burn-hour').dataset.value,
  depletion: document.getElementById('depletion').dataset.value,
  depletionText: document.getElementById('depletion').textContent,
  openHolds: document.getElementById('open-holds').dataset.value,
  held: document.getElementById('held').dataset.value,
  consumed: document.getElementById('consumed').dataset.value,
  refusals: Object.fromEntries([...document.querySelectorAll('#refusals tr[data-reason]')].map(r => [r.dataset.reason, Number(r.cells[1].dataset.value)])),
  alerts: Object.fromEntries([...document.querySelectorAll('#alerts tr[data-alert]')].map(r => [r.dataset.alert, r.dataset.firing === 'true'])),
  events: document.querySelectorAll('#events tbody tr').length,
  consumption: document.querySelectorAll('#consumption tbody tr').length,
  samples: state.samples.length,
  points: (document.querySelector('#chart polyline') || {getAttribute: () => ''}).getAttribute('points').split(' ').filter(Boolean).length,
  marker: window.__marker || null,
  members: Object.fromEntries([...document.querySelectorAll('#members tr[data-member]')].map(r => [r.dataset.member, {cap: r.cells[1].textContent, canSpend: Number(r.cells[6].dataset.value)}])),
  reasonWords: [...document.querySelectorAll('#refusals tr[data-reason] td:first-child')].map(c => c.textContent),
  funds: Number((document.querySelector('#levels tr[data-level="funds"] td:last-child') || {dataset: {}}).dataset.value),
  levelHeadrooms: [...document.querySelectorAll('#levels tbody tr')].map(r => r.cells[5].textContent),
  status: document.getElementById('status').textContent,
})"""


def page_after(browser, instant_ms):
    """The page's numbers, once it shows data read after `instant_ms`."""
    import json

    browser.wait_for("Number(document.getElementById('detail').dataset.at || 0) > %d" % instant_ms)
    return json.loads(browser.evaluate(PAGE))


def numbers(page):
    return {key: int(page[key]) for key in ("balance", "allotment", "openHolds", "held", "consumed", "burnMinute", "burnHour")}


def api_numbers(overview):
    account = overview["account"]
    return {
        "balance": account["balance"], "allotment": account["allotment"], "openHolds": account["openHolds"], "held": account["held"],
        "consumed": account["consumed"], "burnMinute": account["burn"]["lastMinute"], "burnHour": account["burn"]["lastHour"],
    }


def test_the_dashboard_shows_credits_burning_down_live_and_agrees_with_the_read_api(admin_server, browser):
    with admin_server.client() as client:
        provision(client)
    token = admin_server.token
    load = Load(admin_server)
    try:
        browser.navigate("%s/dashboard#token=%s&account=acme" % (admin_server.admin_url, token))
        browser.wait_for("document.getElementById('balance') && document.getElementById('balance').dataset.value")
        browser.evaluate("window.__marker = 42")

        # While credits burn: every figure the page shows lies between the API's answers read
        # just before and just after the page's own read.
        seen = []
        for _ in range(4):
            status, before = read_api(admin_server, "/api/v1/accounts/acme/overview", token)
            assert status == 200
            page = page_after(browser, before["account"]["atMilliseconds"])
            status, after = read_api(admin_server, "/api/v1/accounts/acme/overview", token)
            shown, low, high = numbers(page), api_numbers(after), api_numbers(before)
            assert low["balance"] <= shown["balance"] <= high["balance"], (low, shown, high)
            assert high["consumed"] <= shown["consumed"] <= low["consumed"], (low, shown, high)
            assert shown["allotment"] == 400 and shown["openHolds"] == 3 and shown["held"] == 3 * RATE
            for reason, count in page["refusals"].items():
                assert before["refusals"]["byReason"].get(reason, 0) <= count <= after["refusals"]["byReason"][reason]
            seen.append(page)
            time.sleep(0.6)
        assert seen[-1]["balance"] != seen[0]["balance"], "the balance did not move on the page while credits were spent"
        assert seen[-1]["at"] > seen[0]["at"] and seen[-1]["samples"] > seen[0]["samples"]
        assert seen[-1]["marker"] == 42, "the page reloaded instead of updating in place"
    finally:
        load.finish()
    assert load.spends > 100 and load.refusals > 10

    # Once the load stops: the page's figures equal the read API's.
    time.sleep(1.2)
    status, settled = read_api(admin_server, "/api/v1/accounts/acme/overview", token)
    page = page_after(browser, settled["account"]["atMilliseconds"])
    status, later = read_api(admin_server, "/api/v1/accounts/acme/overview", token)
    shown, expected = numbers(page), api_numbers(settled)
    for key in ("balance", "allotment", "openHolds", "held", "consumed"):
        assert shown[key] == expected[key] == api_numbers(later)[key], key
    assert api_numbers(later)["burnMinute"] <= shown["burnMinute"] <= expected["burnMinute"]
    assert shown["burnHour"] == expected["burnHour"]
    assert page["refusals"] == settled["refusals"]["byReason"] == later["refusals"]["byReason"]
    assert set(page["refusals"]) == {"memberCap", "insufficientFunds"}
    # What the ledger itself says, through the protocol.
    with admin_server.client() as client:
        balance = client.balance(account="acme")
    funds = balance.funds
    assert shown["balance"] == funds.pool + funds.member + funds.parent_pool - funds.overdrawn - funds.overdraft_held
    assert shown["consumed"] == next(level.consumed for level in balance.levels if level.level == "account")
    # The depletion projection is the page's own balance over its own burn rate.
    if shown["burnMinute"] > 0:
        assert int(page["depletion"]) == shown["balance"] * 60 // shown["burnMinute"]
    # Alerts: "low" (99,000 credits) fired during the load, "empty" did not; both as the API says.
    assert page["alerts"] == {"low": True, "empty": False}
    assert {alert["id"]: alert["firing"] for alert in settled["alerts"]} == page["alerts"]
    assert page["events"] >= 1 and page["consumption"] >= 1
    assert page["points"] >= 2
    # Members seen in the activity, with their caps: dee, capped at 50, cannot afford another summary.
    assert page["members"]["dee"]["cap"] == "50" and page["members"]["dee"]["canSpend"] < RATE
    assert {member["member"]: member["canSpend"] for member in settled["members"]}["dee"] == page["members"]["dee"]["canSpend"]
    assert set(page["members"]) == {member["member"] for member in settled["members"]} and "ana" in page["members"]
    # Reasons in words, funds as their own row, no infinity for a level without a cap.
    assert "member cap reached" in page["reasonWords"] and "insufficient funds" in page["reasonWords"]
    assert page["funds"] == settled["headroom"]["funds"]
    assert "∞" not in page["levelHeadrooms"]

    path = browser.screenshot("dashboard.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    print("screenshot:", path)


def test_the_dashboard_asks_for_a_credential_and_works_once_one_is_typed_in(admin_server, browser):
    with admin_server.client() as client:
        provision(client)
    browser.navigate(admin_server.admin_url + "/dashboard")
    status = browser.wait_for("document.getElementById('status').className === 'error' && document.getElementById('status').textContent")
    assert "credential" in status
    assert browser.evaluate("document.querySelectorAll('nav .acct').length") == 0
    browser.evaluate("document.getElementById('token').value = %r; document.getElementById('use-token').click()" % admin_server.token)
    browser.wait_for("document.querySelectorAll('nav .acct').length === 1")
    balance = browser.wait_for("document.getElementById('balance') && document.getElementById('balance').dataset.value")
    status, summary = read_api(admin_server, "/api/v1/accounts/acme", admin_server.token)
    assert int(balance) == summary["account"]["balance"] == 400 + 100_000 - 3 * RATE
