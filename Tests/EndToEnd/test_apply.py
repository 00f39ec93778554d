"""`tollgate apply` against the real server (issue 20): a plan file can no longer change money
without saying so. Re-applying an unchanged file issues nothing; an edited grant is refused with
nothing sent unless --new-grants; unknown keys and invalid values are refused, with the file's
line, before anything is sent; --dry-run sends nothing; settings converge to the file."""

import json
import subprocess

from conftest import binary

PLAN = """products:
  ai.summary: 7
accounts:
  - id: acme
    members: [ana, ben]
    cap: {cap}
    groups:
      - id: research
        members: [ana]
    grants:
      - amount: {amount}
        priority: 5
        source: top-up
        expires: 30d
      - id: welcome
        amount: 50
        source: promotional
"""


def run(server, *arguments):
    common = ["--server", server.address, "--token-file", server.token_file]
    return subprocess.run([binary("tollgate"), *arguments, *common], capture_output=True, text=True, timeout=120)


def balance(server, account="acme"):
    result = run(server, "balance", account, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def write(path, **values):
    path.write_text(PLAN.format(**{"cap": 1000, "amount": 500, **values}))
    return str(path)


def test_reapplying_an_unchanged_file_issues_nothing(admin_server, tmp_path):
    plan = write(tmp_path / "plan.yaml")
    first = run(admin_server, "apply", plan)
    assert first.returncode == 0, first.stdout + first.stderr
    assert balance(admin_server)["funds"]["pool"] == 550
    again = run(admin_server, "apply", plan)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("issued   grant") == 2
    assert balance(admin_server)["funds"]["pool"] == 550


def test_an_edited_grant_is_refused_with_nothing_sent_unless_asked(admin_server, tmp_path):
    assert run(admin_server, "apply", write(tmp_path / "plan.yaml")).returncode == 0
    # The grant's amount and the account's cap both change: neither is applied.
    edited = write(tmp_path / "edited.yaml", amount=600, cap=10)
    refused = run(admin_server, "apply", edited)
    assert refused.returncode == 65, refused.stdout + refused.stderr
    assert "nothing was sent" in refused.stderr and "edited.yaml:11: grant #1 of acme: 600" in refused.stderr
    after = balance(admin_server)
    assert after["funds"]["pool"] == 550
    assert next(level for level in after["levels"] if level["level"] == "account")["limit"] == 1000
    # --dry-run says the same and sends nothing either.
    dry = run(admin_server, "apply", edited, "--dry-run")
    assert dry.returncode == 65
    assert "NOT ISSUED grant #1 of acme: 600" in dry.stdout and "issued   grant welcome" in dry.stdout
    assert "change   cap acme = 10" in dry.stdout
    assert balance(admin_server)["funds"]["pool"] == 550
    # Asked for, the edited grant is issued as a new grant; the unchanged one is left alone.
    issued = run(admin_server, "apply", edited, "--new-grants")
    assert issued.returncode == 0, issued.stdout + issued.stderr
    after = balance(admin_server)
    assert after["funds"]["pool"] == 1150
    assert next(level for level in after["levels"] if level["level"] == "account")["limit"] == 10


def test_settings_converge_to_the_file(admin_server, tmp_path):
    for cap in (100, 40, 100):
        result = run(admin_server, "apply", write(tmp_path / ("cap-%d.yaml" % cap), cap=cap))
        assert result.returncode == 0, result.stdout + result.stderr
        assert next(level for level in balance(admin_server)["levels"] if level["level"] == "account")["limit"] == cap


def test_an_invalid_file_is_refused_before_anything_is_sent(admin_server, tmp_path):
    cases = {
        "unknown key": ("accounts:\n  - id: beta\n    grants:\n      - amount: 5\n        priorty: 5\n", 5, 'unknown key "priorty"'),
        "negative grant": ("accounts:\n  - id: beta\n    members: [a]\n    grants:\n      - amount: -5\n", 5, "amount out of range"),
        "member not listed": ("accounts:\n  - id: beta\n    members: [a]\n    groups:\n      - id: g\n        members: [a, zed]\n", 5, "zed"),
        "bad identifier": ("accounts:\n  - id: beta\n    members: [\"a b\"]\n", 3, "printable ASCII"),
        "wrong kind": ("accounts:\n  - id: beta\n    members: {a: 1}\n", 3, "must be a list"),
        "unknown top-level key": ("acounts: []\n", 1, 'unknown key "acounts"'),
    }
    for name, (text, line, words) in cases.items():
        path = tmp_path / (name.replace(" ", "-") + ".yaml")
        path.write_text(text)
        result = run(admin_server, "apply", str(path))
        assert result.returncode == 64, (name, result.stdout, result.stderr)
        assert "%s:%d:" % (path, line) in result.stderr and words in result.stderr, (name, result.stderr)
        assert "Usage:" not in result.stderr
        assert run(admin_server, "balance", "beta").returncode == 4, name  # unknownAccount: nothing was created
    # Under --json the error is JSON on standard output.
    result = run(admin_server, "apply", str(tmp_path / "unknown-key.yaml"), "--json")
    assert result.returncode == 64 and json.loads(result.stdout)["line"] == 5


def test_a_dry_run_of_a_new_account_creates_nothing(admin_server, tmp_path):
    dry = run(admin_server, "apply", write(tmp_path / "plan.yaml"), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "create   account acme" in dry.stdout and "issue    grant welcome" in dry.stdout
    assert run(admin_server, "balance", "acme").returncode == 4


def test_exit_statuses_and_a_missing_server(admin_server, tmp_path):
    assert run(admin_server, "apply", write(tmp_path / "plan.yaml")).returncode == 0
    # Funds and caps: 3; anything else the ledger refuses: 4.
    assert run(admin_server, "spend", "acme", "ai.summary", "1000", "--member", "ana").returncode == 3
    assert run(admin_server, "spend", "acme", "ai.nothing", "1", "--member", "ana").returncode == 4
    assert run(admin_server, "balance", "nobody").returncode == 4
    # No server there: a sentence, not a stack of NIO types; under --json, JSON on stdout.
    missing = subprocess.run([binary("tollgate"), "balance", "acme", "--server", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "cannot connect to 127.0.0.1:1 — is tollgated running?" in missing.stderr
    as_json = subprocess.run([binary("tollgate"), "balance", "acme", "--json", "--server", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 1 and "is tollgated running?" in json.loads(as_json.stdout)["error"]


def test_the_agent_limits_example_sets_window_caps_soft_caps_and_open_hold_bounds(admin_server):
    """examples/agent-limits.yaml: an agent is held to an hourly cap and to four actions in flight."""
    import pathlib
    import time

    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "agent-limits.yaml"
    # The hour rolls on the server's clock: start well inside one.
    to_next_hour = 3600 - time.time() % 3600
    if to_next_hour < 60:
        time.sleep(to_next_hour + 1)
    applied = run(admin_server, "apply", str(example))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    planner = json.loads(run(admin_server, "balance", "agents-co", "--member", "planner", "--json").stdout)
    member = next(level for level in planner["levels"] if level["level"] == "member")
    assert [(c["window"], c["mode"], c["limit"]) for c in member["caps"]] == [("hour", "hard", 200), ("hour", "soft", 150), ("day", "hard", 1000)]
    assert planner["openHoldsLimit"] == 4
    # Four actions in flight, then a fifth is refused for concurrency (exit 4, another reason).
    for _ in range(4):
        held = run(admin_server, "reserve", "agents-co", "llm.call", "10", "--member", "planner", "--ttl", "5m")
        assert held.returncode == 0, held.stdout + held.stderr
    fifth = run(admin_server, "reserve", "agents-co", "llm.call", "10", "--member", "planner", "--ttl", "5m", "--json")
    assert fifth.returncode == 4, fifth.stdout + fifth.stderr
    assert json.loads(fifth.stdout)["reason"] == "concurrencyLimit"
    # 40 held; 161 more would pass the hourly cap of 200, and the refusal names the window.
    over = run(admin_server, "spend", "agents-co", "llm.call", "161", "--member", "planner", "--json")
    assert over.returncode == 3, over.stdout + over.stderr
    refusal = json.loads(over.stdout)
    assert refusal["reason"] == "memberCap" and refusal["subject"] == "planner per hour"
    assert run(admin_server, "spend", "agents-co", "llm.call", "160", "--member", "planner").returncode == 0
    # The file's metered model: the worst case of a call, 8,000 in and 4,000 out, is 84 credits.
    call = run(admin_server, "reserve", "agents-co", "gpt-x", "--member", "coder", "--dimension", "input=8000", "--dimension", "output=4000", "--json")
    assert call.returncode == 0 and json.loads(call.stdout)["cost"] == 84, call.stdout + call.stderr
    grants = balance(admin_server, "agents-co")["grants"]
    assert sorted(g["products"] for g in grants) == [[], ["llm.call"]]
    # Re-applying converges: nothing is refused and the caps are the same.
    again = run(admin_server, "apply", str(example))
    assert again.returncode == 0, again.stdout + again.stderr
    # A cap over an unknown window is refused before anything is sent.
    bad = run(admin_server, "member", "set-cap", "agents-co", "planner", "5", "--per", "week")
    assert bad.returncode == 64 and "--per" in bad.stderr


def test_the_cli_meters_an_llm_call_and_scopes_a_grant(admin_server):
    """`tollgate rate set-metered`, `reserve/commit --dimension` and `grant add --product`."""
    def ok(*arguments):
        result = run(admin_server, *arguments)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    ok("account", "create", "llmco")
    ok("rate", "set-metered", "gpt-x", "input", "3", "--per", "1000")
    ok("rate", "set-metered", "gpt-x", "output", "15", "--per", "1000")
    ok("grant", "add", "llmco", "100")
    ok("grant", "add", "llmco", "50", "--product", "gpt-mini", "--source", "promotional")
    held = json.loads(ok("reserve", "llmco", "gpt-x", "--dimension", "input=8000", "--dimension", "output=4000", "--json").stdout)
    assert held["cost"] == 84
    done = json.loads(ok("commit", "llmco", str(held["hold"]), "--dimension", "input=5123", "--dimension", "output=1001", "--json").stdout)
    assert done["committed"] == 31 and done["returned"] == 53
    # The promotional grant pays for gpt-mini only: gpt-x has 69 left, not 119.
    over = run(admin_server, "spend", "llmco", "gpt-x", "--dimension", "output=4700", "--json")
    assert over.returncode == 3 and json.loads(over.stdout)["reason"] == "insufficientFunds", over.stdout + over.stderr
    grants = balance(admin_server, "llmco")["grants"]
    assert sorted(g["products"] for g in grants) == [[], ["gpt-mini"]]
    bad = run(admin_server, "rate", "set-metered", "gpt-x", "input", "3", "--per", "10")
    assert bad.returncode == 64 and "--per" in bad.stderr
    both = run(admin_server, "spend", "llmco", "gpt-x", "5", "--dimension", "input=1")
    assert both.returncode == 64
