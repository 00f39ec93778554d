"""tollgate.openai_agents against the real tollgated: an Agents SDK agent run by its Runner with a
scripted model (the SDK's Model interface; no API key), its tools gated and its model calls
charged by the tokens each response reports."""

import asyncio
import itertools
import json

import pytest

from conftest import setup_account

pytest.importorskip("agents")
from agents import Agent, Runner, set_tracing_disabled  # noqa: E402
from agents.items import ModelResponse  # noqa: E402
from agents.models.interface import Model  # noqa: E402
from agents.usage import Usage  # noqa: E402
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText  # noqa: E402

import tollgate  # noqa: E402
from tollgate.openai_agents import TollgateRunHooks, gated_tool  # noqa: E402

set_tracing_disabled(True)  # no API key, no trace export
CALL_IDS = itertools.count(1)


class ScriptedModel(Model):
    """Answers each model call with the next scripted turn: tool calls, or a final message."""

    def __init__(self, turns):
        self.turns = list(turns)

    async def get_response(self, system_instructions, input, model_settings, tools, output_schema, handoffs, tracing, **kwargs):
        turn = self.turns.pop(0)
        usage = Usage(requests=1, input_tokens=30, output_tokens=5, total_tokens=35)
        if isinstance(turn, str):
            message = ResponseOutputMessage(id="m", type="message", role="assistant", status="completed",
                                            content=[ResponseOutputText(type="output_text", text=turn, annotations=[])])
            return ModelResponse(output=[message], usage=usage, response_id=None)
        calls = []
        for name, arguments in turn:
            n = next(CALL_IDS)
            calls.append(ResponseFunctionToolCall(type="function_call", id="f%d" % n, call_id="c%d" % n, name=name, arguments=json.dumps(arguments)))
        return ModelResponse(output=calls, usage=usage, response_id=None)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError


def tools(gate):
    @gated_tool(gate, "web_search")
    async def search(query: str) -> str:
        """Searches the web."""
        return "found " + query

    @gated_tool(gate, "web_fetch", quantity="pages")
    def fetch(url: str, pages: int) -> str:
        """Fetches pages."""
        return "%d pages" % pages

    @gated_tool(gate, "web_search", failure_error_function=lambda context, error: "tool failed: %s" % error)
    def boom() -> str:
        """Always fails."""
        raise RuntimeError("the tool broke")

    return [search, fetch, boom]


def outputs(result):
    return [item.output for item in result.new_items if item.type == "tool_call_output_item"]


def test_an_agents_sdk_agent_is_gated_charged_and_refused(server):
    async def main():
        async with server.async_client(account="acme", member="alice") as gate:
            with server.client() as admin:
                setup_account(admin, credits=10, rate=2)
                admin.set_rate("web_fetch", 1)
                admin.set_rate("llm-tokens", 1)
                admin.add_grant("acme", 100)
            hooks = TollgateRunHooks(gate, "llm-tokens", estimate=100, tokens_per_unit=10)
            turns = [[("search", {"query": "a"})], [("fetch", {"url": "u", "pages": 3})], [("boom", {})], "done"]
            agent = Agent(name="researcher", instructions="research", tools=tools(gate), model=ScriptedModel(turns))
            result = await Runner.run(agent, "go", hooks=hooks)
            assert result.final_output == "done"
            assert outputs(result)[:2] == ["found a", "3 pages"] and "tool failed" in outputs(result)[2]
            # Tools 2 + 3 (boom released); four model calls of 35 tokens, 4 units each.
            assert hooks.charged == 16
            balance = await gate.balance()
            assert balance.funds.pool == 110 - 2 - 3 - 16 and balance.open_holds == 0
            # Out of credits for a tool: the model reads why, and the tool never runs.
            await gate.spend("llm-tokens", balance.funds.pool - 1)   # 1 left: less than a search (2)
            refused = await Runner.run(Agent(name="r", tools=tools(gate), model=ScriptedModel([[("search", {"query": "b"})], "ok"])), "go")
            assert outputs(refused)[0].startswith("out of credits: search was not run (insufficientFunds acme")
            # Out of credits for a model call: the run stops before the call.
            with pytest.raises(tollgate.CreditsExhausted):
                await Runner.run(Agent(name="r", model=ScriptedModel(["never"])), "go", hooks=hooks)
            await hooks.release_all()
            assert (await gate.balance()).open_holds == 0
    asyncio.run(main())


def test_the_agents_sdk_tool_fails_open_within_the_allowance(tmp_path):
    from test_failsafe import Restartable
    server = Restartable(tmp_path)

    async def main():
        async with tollgate.AsyncClient(server.address, token_file=server.token_file, account="acme", member="alice", timeout=5,
                                        retries=1, fail="open", offline_allowance=4, offline_rates={"web_search": 2}) as gate:
            with tollgate.Client(server.address, token_file=server.token_file) as admin:
                setup_account(admin, credits=100, rate=2)
                admin.set_rate("web_fetch", 1)
            server.stop()
            turns = [[("search", {"query": "a"})], [("search", {"query": "b"})], [("search", {"query": "c"})], "done"]
            result = await Runner.run(Agent(name="r", tools=tools(gate), model=ScriptedModel(turns)), "go")
            assert outputs(result)[:2] == ["found a", "found b"] and "offline allowance" in outputs(result)[2]
            server.start()
            assert await gate.settle() == 0
            assert (await gate.balance()).funds.pool == 96
    try:
        asyncio.run(main())
    finally:
        if server.process.poll() is None:
            server.stop()


def test_model_calls_are_priced_by_input_output_and_cached_tokens(server):
    async def main():
        async with server.async_client(account="acme", member="alice") as gate:
            with server.client() as admin:
                setup_account(admin, credits=1000, rate=1)
                admin.set_metered_rate("gpt-x", "input", 3, per=1000)
                admin.set_metered_rate("gpt-x", "output", 15, per=1000)
                admin.set_metered_rate("gpt-x", "cached", 300, per=1_000_000)
            hooks = TollgateRunHooks(gate, "gpt-x", estimate={"input": 8000, "output": 4000, "cached": 8000})
            agent = Agent(name="writer", instructions="write", model=ScriptedModel(["done"]))
            result = await Runner.run(agent, "go", hooks=hooks)
            assert result.final_output == "done"
            # 30 input and 5 output tokens: 0.09 + 0.075 → 1 credit.
            assert hooks.charged == 1
            balance = await gate.balance()
            assert balance.funds.pool == 1000 - 1 and balance.open_holds == 0
    asyncio.run(main())
