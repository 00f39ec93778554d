"""A tiny MCP server (the mcp package's own), for the tollgate-mcp example."""

try:
    from mcp.server.mcpserver import MCPServer as Server  # mcp 2.x
except ImportError:
    from mcp.server.fastmcp import FastMCP as Server  # mcp 1.x

server = Server("summaries")


@server.tool()
def summarize(text: str) -> str:
    """Summarizes a text."""
    return "summary of %r" % text[:20]


if __name__ == "__main__":
    server.run()
