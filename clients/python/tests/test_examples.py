"""examples/agents/ run against the real tollgated, as a user would run them."""

import asyncio
import importlib.util
import os

import pytest

from conftest import ROOT

EXAMPLES = ROOT / "examples" / "agents"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def team_plan(server, monkeypatch):
    with server.client() as admin:
        admin.set_rate("ai.summary", 7)
        admin.set_rate("ai.assistant", 12)
        admin.create_account("acme")
        admin.add_member("acme", "ana")
        admin.add_grant("acme", 1_000)
    monkeypatch.setenv("TOLLGATE_SERVER", server.address)
    monkeypatch.setenv("TOLLGATE_TOKEN_FILE", server.token_file)
    return server


def test_the_langgraph_example(team_plan):
    pytest.importorskip("langgraph.prebuilt")
    # Three summaries (7 each) and four model calls of 1,200 tokens (2 units of 12 each).
    assert load("langgraph_agent").main(3) == 3 * 7 + 4 * 2 * 12


def test_the_openai_agents_example(team_plan):
    pytest.importorskip("agents")
    assert asyncio.run(load("openai_agents_agent").main(3)) == 3 * 7 + 4 * 2 * 12


def test_the_mcp_example(team_plan):
    pytest.importorskip("mcp")
    os.environ["PYTHONPATH"] = str(ROOT / "clients" / "python") + os.pathsep + os.environ.get("PYTHONPATH", "")
    texts = asyncio.run(load("mcp_client").main(3))
    assert texts == ["summary of 'report %d'" % n for n in range(3)]
    with team_plan.client(account="acme") as gate:
        assert gate.balance().funds.pool == 1_000 - 21
