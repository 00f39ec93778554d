"""An MCP server for the gateway's tests (the mcp package's own server, over stdio)."""

try:
    from mcp.server.mcpserver import MCPServer as Server  # mcp 2.x
except ImportError:
    from mcp.server.fastmcp import FastMCP as Server  # mcp 1.x

server = Server("upstream")


@server.tool()
def search(query: str) -> str:
    """Searches (a fake)."""
    return "results for " + query


@server.tool()
def fetch(url: str, pages: int) -> str:
    """Fetches some pages (a fake)."""
    return "%d pages of %s" % (pages, url)


@server.tool()
def boom() -> str:
    """Always fails."""
    raise RuntimeError("the tool broke")


@server.tool()
def free() -> str:
    """Not priced at the gateway."""
    return "free"


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 1:  # a port: streamable HTTP on 127.0.0.1
        try:
            server.run("streamable-http", port=int(sys.argv[1]))  # mcp 2.x
        except TypeError:
            server.settings.port = int(sys.argv[1])  # mcp 1.x
            server.run("streamable-http")
    else:
        server.run()
