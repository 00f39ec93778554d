"""tollgate.langchain against the real tollgated: a LangGraph agent (create_react_agent) with the
framework's own fake chat model, its tools gated with one line and its model calls charged by
the tokens each response reports."""

import warnings

import pytest

from conftest import setup_account

pytest.importorskip("langchain_core")
langgraph_prebuilt = pytest.importorskip("langgraph.prebuilt")
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

import tollgate  # noqa: E402
from tollgate.langchain import TollgateCallbackHandler, gate_tools  # noqa: E402


class ScriptedModel(GenericFakeChatModel):
    """The fake chat model, answering tool-calling agents from its script."""

    def bind_tools(self, tools, **kwargs):
        return self


@tool
def search(query: str) -> str:
    """Searches the web."""
    return "found " + query


@tool
def fetch(url: str, pages: int) -> str:
    """Fetches pages."""
    return "%d pages" % pages


@tool
def boom() -> str:
    """Always fails."""
    raise RuntimeError("the tool broke")


def call(name, arguments, index):
    return AIMessage(content="", tool_calls=[{"name": name, "args": arguments, "id": "call-%d" % index}],
                     usage_metadata={"input_tokens": 30, "output_tokens": 5, "total_tokens": 35})


def agent(client, script, handler=None):
    tools = gate_tools([search, fetch, boom], client, prices={"search": "web_search", "fetch": ("web_fetch", "pages"), "boom": "web_search"})
    model = ScriptedModel(messages=iter(script))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Tool errors come back to the model as messages (the ToolNode's own option).
        graph = langgraph_prebuilt.create_react_agent(model, langgraph_prebuilt.ToolNode(tools, handle_tool_errors=True))
    config = {"callbacks": [handler]} if handler else {}
    return graph.invoke({"messages": [("user", "go")]}, config=config)


def tool_outputs(result):
    return [message.content for message in result["messages"] if message.type == "tool"]


def test_a_langgraph_agents_tools_are_gated_charged_and_refused(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=10, rate=2)
        gate.set_rate("web_fetch", 1)
        script = [call("search", {"query": "a"}, 1), call("fetch", {"url": "u", "pages": 3}, 2), call("boom", {}, 3),
                  call("search", {"query": "b"}, 4), call("search", {"query": "c"}, 5), AIMessage(content="done")]
        outputs = tool_outputs(agent(gate, script))
        assert outputs[0] == "found a" and outputs[1] == "3 pages"
        assert "the tool broke" in outputs[2] or "Error" in outputs[2]    # boom raised: released
        assert outputs[3] == "found b"
        # search 2 + fetch 3 + search 2 + search 2 = 9 of 10; boom's hold was released.
        assert outputs[4] == "found c"
        balance = gate.balance()
        assert balance.funds.pool == 10 - 2 - 3 - 2 - 2 and balance.open_holds == 0
        refused = tool_outputs(agent(gate, [call("search", {"query": "d"}, 6), AIMessage(content="done")]))
        assert refused[0].startswith("out of credits: search was not run (insufficientFunds acme")
        assert gate.balance().funds.pool == 1


def test_model_calls_are_charged_by_the_tokens_they_report(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=100, rate=1, product="llm-tokens")
        gate.set_rate("web_search", 1)
        handler = TollgateCallbackHandler(gate, "llm-tokens", estimate=100, tokens_per_unit=10)
        script = [call("search", {"query": "a"}, 1), AIMessage(content="done", usage_metadata={"input_tokens": 40, "output_tokens": 1,
                                                                                            "total_tokens": 41})]
        agent(gate, script, handler)
        # Two model calls: 35 tokens → 4 units, 41 → 5 (rounded up); and the search, 1.
        assert handler.charged == 9
        assert gate.balance().funds.pool == 100 - 9 - 1
        # Out of credits for the estimate (100 tokens = 10 units): the model call never happens.
        gate.spend("llm-tokens", 85)   # 5 left, the estimate needs 10
        with pytest.raises(tollgate.CreditsExhausted):
            agent(gate, [AIMessage(content="never")], handler)
        assert gate.balance().open_holds == 0


def test_model_calls_are_priced_by_input_and_output_tokens_per_model(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=1000, rate=1)
        gate.set_metered_rate("gpt-x", "input", 3, per=1000)
        gate.set_metered_rate("gpt-x", "output", 15, per=1000)
        handler = TollgateCallbackHandler(gate, "gpt-x", estimate={"input": 8000, "output": 4000})
        # Each reply reports 30 input and 5 output tokens: 0.09 + 0.075 = 0.165 → 1 credit a call.
        agent(gate, [call("search", {"query": "a"}, 1), AIMessage(content="done", usage_metadata={"input_tokens": 6000, "output_tokens": 2000,
                                                                                                  "total_tokens": 8000})], handler)
        # 1 + (18 + 30 = 48) for the model calls; 1 for the search.
        assert handler.charged == 1 + 48
        assert gate.balance().funds.pool == 1000 - 49 - 1 and gate.balance().open_holds == 0
        # The worst case (24 + 60 = 84) must fit before the call is made.
        gate.spend("web_search", gate.balance().funds.pool - 80)
        with pytest.raises(tollgate.CreditsExhausted):
            agent(gate, [AIMessage(content="never")], handler)
        with pytest.raises(ValueError):
            TollgateCallbackHandler(gate, "gpt-x", estimate={"images": 3})
