"""tollgate-mcp in front of a real MCP server (the mcp package's FastMCP, over stdio), driven by
the mcp package's own client: priced tools are charged when they succeed, released when they
fail, refused as tool errors when the credits are gone; unpriced tools pass (or are refused)."""

import asyncio
import pathlib
import sys

import pytest

from conftest import setup_account

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = HERE.parent


def gateway(server, *extra):
    arguments = ["-m", "tollgate.mcp_gateway", "--upstream", "%s %s" % (sys.executable, HERE / "mcp" / "upstream.py"),
                 "--account", "acme", "--member", "alice", "--server", server.address, "--token-file", server.token_file,
                 "--tool", "search=web_search:2", "--tool", "fetch=web_fetch:@pages", "--tool", "boom=web_search", *extra]
    return StdioServerParameters(command=sys.executable, args=arguments, env={"PYTHONPATH": str(PACKAGE)})


async def session_calls(parameters, calls):
    async with stdio_client(parameters) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            results = [await session.call_tool(name, arguments) for name, arguments in calls]
            return tools, results


def failed(result):
    """The result's error flag: `is_error` in mcp 2.x, `isError` in 1.x."""
    return bool(getattr(result, "is_error", None) if hasattr(result, "is_error") else getattr(result, "isError"))


def text(result):
    return " ".join(getattr(item, "text", "") for item in result.content)


def test_tool_calls_are_gated_charged_and_released(server):
    with server.client(account="acme") as admin:
        setup_account(admin, credits=10, rate=1)
        admin.set_rate("web_fetch", 2)
    calls = [("search", {"query": "tollgate"}), ("fetch", {"url": "https://example.com", "pages": 3}), ("boom", {}), ("free", {}),
             ("search", {"query": "again"})]
    tools, results = asyncio.run(session_calls(gateway(server), calls))
    assert tools == {"search", "fetch", "boom", "free"}
    search, fetch, boom, free, refused = results
    assert not failed(search) and "results for tollgate" in text(search)
    assert not failed(fetch) and "3 pages" in text(fetch)
    assert failed(boom)                     # the tool failed: its hold was released
    assert not failed(free)                 # not priced: passed through
    # 10 credits: search 2 + fetch 3 pages × 2 = 8, and the second search's 2 fit exactly.
    assert not failed(refused)
    with server.client(account="acme") as admin:
        balance = admin.balance()
        assert balance.funds.pool == 0 and balance.open_holds == 0
    # Out of credits: the call never reaches the tool and comes back as a tool error.
    _, (out,) = asyncio.run(session_calls(gateway(server), [("search", {"query": "more"})]))
    assert failed(out) and "out of credits" in text(out) and "insufficientFunds" in text(out)


def test_unmapped_tools_can_be_refused_and_bad_quantities_are_tool_errors(server):
    with server.client(account="acme") as admin:
        setup_account(admin, credits=100, rate=1)
        admin.set_rate("web_fetch", 1)
    _, (free, fetch) = asyncio.run(session_calls(gateway(server, "--unmapped", "refuse"), [("free", {}), ("fetch", {"url": "u", "pages": 0})]))
    assert failed(free) and "no price" in text(free)
    assert failed(fetch) and "pages" in text(fetch)
    with server.client(account="acme") as admin:
        assert admin.balance().funds.pool == 100


def test_with_the_gate_down_closed_refuses_and_open_runs_within_the_allowance(tmp_path):
    from test_failsafe import Restartable
    server = Restartable(tmp_path)
    with tollgate_client(server) as admin:
        setup_account(admin, credits=100, rate=1)
        admin.set_rate("web_fetch", 1)
    server.stop()
    try:
        _, (closed,) = asyncio.run(session_calls(gateway(server), [("search", {"query": "x"})]))
        assert failed(closed) and "credit gate" in text(closed)          # fail closed: not run
        open_gateway = gateway(server, "--fail", "open", "--offline-allowance", "4", "--offline-rate", "web_search=1")
        _, (first, second, third) = asyncio.run(session_calls(open_gateway, [("search", {"query": "a"}), ("search", {"query": "b"}),
                                                                               ("search", {"query": "c"})]))
        assert not failed(first) and not failed(second)                   # 2 + 2 of the 4 allowed offline
        assert failed(third) and "offline allowance" in text(third)
    finally:
        if server.process.poll() is None:
            server.stop()


def tollgate_client(server):
    import tollgate
    return tollgate.Client(server.address, token_file=server.token_file, account="acme")


def test_a_streamable_http_upstream_is_gated_the_same_way(server):
    import subprocess
    from conftest import free_port, wait_for_port
    with server.client(account="acme") as admin:
        setup_account(admin, credits=4, rate=1)
        admin.set_rate("web_fetch", 1)
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(HERE / "mcp" / "upstream.py"), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, seconds=60)
        arguments = ["-m", "tollgate.mcp_gateway", "--upstream-url", "http://127.0.0.1:%d/mcp" % port, "--account", "acme", "--member", "alice",
                     "--server", server.address, "--token-file", server.token_file, "--tool", "search=web_search:2", "--tool", "boom=web_search"]
        parameters = StdioServerParameters(command=sys.executable, args=arguments, env={"PYTHONPATH": str(PACKAGE)})
        tools, (search, boom, again, refused) = asyncio.run(session_calls(
            parameters, [("search", {"query": "http"}), ("boom", {}), ("search", {"query": "again"}), ("search", {"query": "more"})]))
        assert {"search", "boom"} <= tools
        assert not failed(search) and "results for http" in text(search)
        assert failed(boom)                                     # released
        assert not failed(again)                                # 2 + 2 of 4
        assert failed(refused) and "out of credits" in text(refused)
        with server.client(account="acme") as admin:
            balance = admin.balance()
            assert balance.funds.pool == 0 and balance.open_holds == 0
    finally:
        upstream.terminate()
        upstream.wait(10)
