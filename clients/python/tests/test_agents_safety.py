"""The integrations under the conditions issue 22 names: agents racing on one pool (no
overspend), a dropped connection after the gate applied a commit (charged once), and the
gate down under the fail-open policy (bounded, settled once)."""

import threading
import warnings

import pytest

import tollgate
from conftest import setup_account
from test_client import DroppingProxy
from test_failsafe import Restartable

pytest.importorskip("langchain_core")
langgraph_prebuilt = pytest.importorskip("langgraph.prebuilt")
from langchain_core.messages import AIMessage  # noqa: E402
from test_langchain import ScriptedModel, search  # noqa: E402  (the same fake model and tool)

from tollgate.langchain import gate_tools  # noqa: E402


def run_agent(client, searches, prefix):
    script = [AIMessage(content="", tool_calls=[{"name": "search", "args": {"query": "q"}, "id": "%s-%d" % (prefix, n)}]) for n in range(searches)]
    script.append(AIMessage(content="done"))
    tools = gate_tools([search], client, prices={"search": "web_search"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = langgraph_prebuilt.create_react_agent(ScriptedModel(messages=iter(script)), tools)
    result = graph.invoke({"messages": [("user", "go")]})
    return [m.content for m in result["messages"] if m.type == "tool"]


def test_agents_racing_on_one_pool_never_overspend(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=50, rate=3)
        outputs = []
        lock = threading.Lock()

        def agent(index):
            got = run_agent(gate, 6, "agent%d" % index)   # one shared client, pipelined across threads
            with lock:
                outputs.extend(got)

        threads = [threading.Thread(target=agent, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        allowed = sum(1 for text in outputs if text == "found q")
        refused = sum(1 for text in outputs if text.startswith("out of credits"))
        assert allowed + refused == 48
        assert allowed == 50 // 3                          # 16 searches of 3 fit in 50; no more
        balance = gate.balance()
        assert balance.funds.pool == 50 - 3 * allowed and balance.open_holds == 0


def test_a_dropped_connection_after_a_commit_charges_once(server):
    with server.client(account="acme") as admin:
        setup_account(admin, credits=20, rate=5)
    proxy = DroppingProxy(server.port, drops=1, drop_on="COMMIT")
    with tollgate.Client("127.0.0.1:%d" % proxy.port, token_file=server.token_file, account="acme", member="alice", retries=3) as gate:
        assert run_agent(gate, 1, "drop") == ["found q"]
        assert proxy.connections == 2                     # the commit's answer was cut: retried with its key
        assert gate.balance().funds.pool == 15            # charged once
    proxy.close()


def test_a_gated_tool_fails_open_within_the_allowance_and_settles(tmp_path):
    server = Restartable(tmp_path)
    try:
        with tollgate.Client(server.address, token_file=server.token_file, account="acme", member="alice", timeout=5, retries=1,
                             fail="open", offline_allowance=6) as gate:
            setup_account(gate, credits=100, rate=2)
            assert run_agent(gate, 1, "online") == ["found q"]   # the rate (2) is learned
            server.stop()
            outputs = run_agent(gate, 4, "offline")              # 6 credits offline: 3 searches, then refused
            assert outputs[:3] == ["found q"] * 3
            assert "offline allowance" in outputs[3]
            server.start()
            assert gate.settle() == 0
            assert gate.balance().funds.pool == 100 - 2 - 6
    finally:
        if server.process.poll() is None:
            server.stop()
