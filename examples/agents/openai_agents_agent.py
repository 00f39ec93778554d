"""An OpenAI Agents SDK agent gated by Tollgate — runnable without an API key: the model is a
scripted `Model` that calls the `summarize` tool, then answers.

    swift run tollgated                                   # terminal 1, from the repository root
    swift run tollgate apply examples/team-plan.yaml      # terminal 2
    pip install ./clients/python openai-agents
    python3 examples/agents/openai_agents_agent.py
"""

import asyncio
import itertools
import json

from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

import tollgate
from tollgate.openai_agents import TollgateRunHooks, gated_tool

set_tracing_disabled(True)
IDS = itertools.count(1)


class ScriptedModel(Model):
    def __init__(self, calls):
        self.turns = [[("summarize", {"text": "report %d" % n})] for n in range(calls)] + ["All done."]

    async def get_response(self, *args, **kwargs):
        turn = self.turns.pop(0)
        usage = Usage(requests=1, input_tokens=900, output_tokens=300, total_tokens=1200)
        if isinstance(turn, str):
            text = ResponseOutputText(type="output_text", text=turn, annotations=[])
            return ModelResponse(output=[ResponseOutputMessage(id="m", type="message", role="assistant", status="completed", content=[text])],
                                 usage=usage, response_id=None)
        calls = []
        for name, arguments in turn:
            n = next(IDS)
            calls.append(ResponseFunctionToolCall(type="function_call", id="f%d" % n, call_id="c%d" % n, name=name, arguments=json.dumps(arguments)))
        return ModelResponse(output=calls, usage=usage, response_id=None)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError


async def main(calls=3):
    async with tollgate.AsyncClient(account="acme", member="ana") as gate:

        @gated_tool(gate, "ai.summary")                                   # the one line for tools
        async def summarize(text: str) -> str:
            """Summarizes a text."""
            return "summary of %r" % text[:20]

        hooks = TollgateRunHooks(gate, "ai.assistant", estimate=4_000)    # and for model calls
        before = (await gate.balance()).funds.balance
        result = await Runner.run(Agent(name="summarizer", tools=[summarize], model=ScriptedModel(calls)), "summarize", hooks=hooks)
        for item in result.new_items:
            if item.type == "tool_call_output_item":
                print("tool:", item.output)
        after = (await gate.balance()).funds.balance
        print("%s — charged %d credits (%d for model calls); balance %d" % (result.final_output, before - after, hooks.charged, after))
        return before - after


if __name__ == "__main__":
    asyncio.run(main())
