"""A LangGraph agent gated by Tollgate — runnable without an API key: the model is LangChain's own
fake chat model, scripted to call the `summarize` tool until the credits run out.

    swift run tollgated                                   # terminal 1, from the repository root
    swift run tollgate apply examples/team-plan.yaml      # terminal 2: account acme, ai.summary at 7
    pip install ./clients/python langchain-core langgraph
    python3 examples/agents/langgraph_agent.py            # reads ./tollgate-data/admin.token

Each summary reserves 7 credits before it runs and commits them when it returns; each model
call is charged by the tokens it reports (ai.assistant per 1,000 tokens, rounded up). When the
credits are gone, the tool is not run and the agent reads why.
"""

import warnings

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

import tollgate
from tollgate.langchain import TollgateCallbackHandler, gate_tools


class ScriptedModel(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):
        return self


@tool
def summarize(text: str) -> str:
    """Summarizes a text."""
    return "summary of %r" % text[:20]


def main(calls=3):
    gate = tollgate.Client(account="acme", member="ana")   # TOLLGATE_SERVER, TOLLGATE_TOKEN_FILE or ./tollgate-data
    usage = {"input_tokens": 900, "output_tokens": 300, "total_tokens": 1200}
    script = [AIMessage(content="", tool_calls=[{"name": "summarize", "args": {"text": "report %d" % n}, "id": "call-%d" % n}],
                        usage_metadata=usage) for n in range(calls)]
    script.append(AIMessage(content="All done.", usage_metadata=usage))
    tools = gate_tools([summarize], gate, prices={"summarize": "ai.summary"})      # the one line for tools
    handler = TollgateCallbackHandler(gate, "ai.assistant", estimate=4_000)       # and for model calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(ScriptedModel(messages=iter(script)), tools)
    before = gate.balance().funds.balance
    result = agent.invoke({"messages": [("user", "summarize the reports")]}, config={"callbacks": [handler]})
    for message in result["messages"]:
        if message.type == "tool":
            print("tool:", message.content)
    after = gate.balance().funds.balance
    print("charged %d credits (%d for model calls); balance %d" % (before - after, handler.charged, after))
    gate.close()
    return before - after


if __name__ == "__main__":
    main()
