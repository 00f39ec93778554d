"""An MCP client calling a tool through tollgate-mcp, which gates it with Tollgate.

    swift run tollgated                                   # terminal 1, from the repository root
    swift run tollgate apply examples/team-plan.yaml      # terminal 2
    pip install ./clients/python mcp
    python3 examples/agents/mcp_client.py

The client starts `tollgate-mcp --upstream 'python3 examples/agents/mcp_server.py' …` as its MCP
server; each `summarize` call reserves 7 credits (ai.summary) first and is committed when the
tool answers. Out of credits, the call comes back as a tool error the model can read.
"""

import asyncio
import os
import pathlib
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = pathlib.Path(__file__).resolve().parent


async def main(calls=3):
    arguments = ["-m", "tollgate.mcp_gateway", "--upstream", "%s %s" % (sys.executable, HERE / "mcp_server.py"),
                 "--account", "acme", "--member", "ana", "--tool", "summarize=ai.summary"]
    if os.environ.get("TOLLGATE_TOKEN_FILE") is None and (pathlib.Path("tollgate-data") / "admin.token").exists():
        arguments += ["--token-file", "tollgate-data/admin.token"]
    parameters = StdioServerParameters(command=sys.executable, args=arguments, env=dict(os.environ))
    texts = []
    async with stdio_client(parameters) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for n in range(calls):
                result = await session.call_tool("summarize", {"text": "report %d" % n})
                text = " ".join(getattr(item, "text", "") for item in result.content)
                texts.append(text)
                print("tool:", text)
    return texts


if __name__ == "__main__":
    asyncio.run(main())
