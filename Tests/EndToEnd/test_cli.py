"""The CLI as a new user meets it (issue 20): typos get a suggestion, a bad value is shown with
its command's usage, every argument has help, and health speaks JSON."""

import json
import subprocess

from conftest import binary


def tollgate(*arguments):
    return subprocess.run([binary("tollgate"), *arguments], capture_output=True, text=True, timeout=60)


def test_a_mistyped_command_gets_a_suggestion():
    result = tollgate("balanse", "acme")
    assert result.returncode == 64
    assert "unknown command 'balanse'; did you mean 'balance'?" in result.stderr
    assert "did you mean" not in tollgate("xyzzy").stderr


def test_a_bad_value_is_shown_with_its_commands_usage():
    result = tollgate("reserve", "acme", "ai.summary", "1", "--ttl", "5x")
    assert result.returncode == 64
    assert '"5x" is not a duration' in result.stderr and "now, never" not in result.stderr
    assert "Usage: tollgate reserve [<options>] <account> <product> [<quantity>]" in result.stderr
    nested = tollgate("grant", "add", "acme", "5", "--expires", "5q")
    assert nested.returncode == 64 and "Usage: tollgate grant add" in nested.stderr
    assert "out of range" in tollgate("reserve", "acme", "p", "1", "--ttl", "99999999999999999d").stderr


def test_every_argument_and_subcommand_has_help():
    for path in (["grant", "void"], ["member", "add"], ["account", "set-parent"], ["group", "remove"]):
        text = tollgate(*path, "--help").stdout
        assert text.startswith("OVERVIEW: "), (path, text[:200])
        arguments = text.split("ARGUMENTS:")[1].split("OPTIONS:")[0]
        for line in arguments.strip().splitlines():
            if line.strip().startswith("<"):
                assert len(line.split(">", 1)[1].strip()) > 0, (path, line)


def test_health_speaks_json(admin_server):
    ready = tollgate("health", "--admin", admin_server.admin_url.split("//")[1].rstrip("/"), "--json")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert json.loads(ready.stdout)["ready"] is True
    down = tollgate("health", "--admin", "127.0.0.1:1", "--json")
    assert down.returncode == 1 and json.loads(down.stdout)["ready"] is False


def test_list_and_show_read_what_the_server_holds(admin_server):
    read = ["--admin", admin_server.admin_url.split("//")[1].rstrip("/"), "--token-file", admin_server.token_file]
    gate = ["--server", admin_server.address, "--token-file", admin_server.token_file]
    with admin_server.client() as client:
        client.set_rate("ai.summary", 7)
        client.create_account("acme")
        for member in ("ana", "ben"):
            client.add_member("acme", member)
        client.set_member_cap("acme", "ben", 50)
        client.create_group("acme", "research")
        client.add_to_group("acme", "research", "ana")
        client.add_grant("acme", 1_000, source="top-up")
        client.define_plan("starter", grants=[{"amount": 25}])
        hold = client.reserve("ai.summary", 2, account="acme", member="ana").hold
    members = json.loads(tollgate("list", "members", "acme", "--json", *read).stdout)["members"]
    assert {m["member"]: (m["cap"], m["held"], m["groups"]) for m in members} == {"ana": (None, 14, ["research"]), "ben": (50, 0, [])}
    holds = json.loads(tollgate("list", "holds", "acme", "--json", *read).stdout)["holds"]
    assert [(h["hold"], h["member"], h["held"]) for h in holds] == [(hold, "ana", 14)]
    products = json.loads(tollgate("list", "products", "--json", *read).stdout)["products"]
    assert {p["product"]: p["creditsPerUnit"] for p in products} == {"ai.summary": 7}
    assert [p["name"] for p in json.loads(tollgate("list", "plans", "--json", *read).stdout)["plans"]] == ["starter"]
    grants = json.loads(tollgate("list", "grants", "acme", "--json", *read).stdout)["grants"]
    assert [(g["amount"], g["held"]) for g in grants] == [(1_000, 14)]
    accounts = tollgate("list", "accounts", *read)
    assert accounts.returncode == 0 and "acme" in accounts.stdout
    shown = tollgate("show", "account", "acme", *read)
    assert shown.returncode == 0 and "balance 986" in shown.stdout and "held 14 by 1 open holds" in shown.stdout
    # An unknown account is a refusal (4), and the message is the API's.
    missing = tollgate("list", "members", "nobody", *read)
    assert missing.returncode == 4 and 'unknown account "nobody"' in missing.stderr
    assert tollgate("balance", "acme", *gate).returncode == 0
