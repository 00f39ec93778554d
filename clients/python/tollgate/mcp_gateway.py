"""tollgate-mcp: a gateway in front of any MCP server — started over stdio, or reached over
streamable HTTP — gating each `tools/call` with Tollgate. The MCP client talks to the gateway
over stdio.

    tollgate-mcp --upstream 'python3 my_server.py' --account acme --member ana \\
                 --tool search=web_search --tool fetch=web_fetch:@pages
    tollgate-mcp --upstream-url http://127.0.0.1:8000/mcp --account acme --tool search=web_search

The MCP client (an agent, an IDE) starts tollgate-mcp as if it were the server; tollgate-mcp
starts the upstream server and passes every message through, except that a `tools/call` of a
mapped tool first reserves credits: when the gate refuses, the call never reaches the upstream
and comes back as an MCP tool error (`isError: true`) saying why, which the agent can read;
when the upstream answers with a result, the hold is committed; when it answers with an error
(a JSON-RPC error, or a result with `isError: true`), or the call is cancelled, the hold is
released. `--tool NAME=PRODUCT[:QUANTITY]` maps a tool to a product; QUANTITY is a number
(default 1) or `@ARGUMENT`, the call's integer argument of that name. Tools not mapped pass
through ungated, unless `--unmapped refuse`. Messages are newline-delimited JSON (MCP's stdio
transport); nothing else is changed. No dependency beyond this package.
"""

import argparse
import json
import os
import urllib.error
import urllib.request
import shlex
import subprocess
import sys
import threading

from . import errors
from .client import Client


def parse_tool(text):
    """NAME=PRODUCT[:QUANTITY] → (name, product, quantity), QUANTITY an int or '@argument'."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError("--tool is NAME=PRODUCT[:QUANTITY], not %r" % text)
    product, _, quantity = rest.partition(":")
    if not quantity:
        quantity = 1
    elif quantity.startswith("@"):
        if len(quantity) == 1:
            raise argparse.ArgumentTypeError("--tool %s: name the argument after @" % name)
    else:
        try:
            quantity = int(quantity)
        except ValueError:
            raise argparse.ArgumentTypeError("--tool %s: the quantity is a whole number or @ARGUMENT, not %r" % (name, quantity)) from None
        if quantity < 1:
            raise argparse.ArgumentTypeError("--tool %s: the quantity must be at least 1" % name)
    return name, product, quantity


def tool_error(request_id, text):
    """An MCP tool result that reports an error to the model (not a protocol error)."""
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": text}], "isError": True}}


class Gateway:
    """The message handling, apart from the pipes: `from_client` and `from_upstream` take one
    parsed message and return what to forward and what to answer."""

    def __init__(self, client, tools, unmapped="pass", ttl=600, log=None):
        self.client, self.tools, self.unmapped, self.ttl = client, tools, unmapped, ttl
        self.log = log or (lambda message: None)
        self.pending = {}   # JSON-RPC id (as JSON text) → hold id
        self.lock = threading.Lock()

    @staticmethod
    def _id(message):
        return json.dumps(message.get("id"), sort_keys=True)

    def quantity(self, spec, arguments):
        if isinstance(spec, int):
            return spec
        value = (arguments or {}).get(spec[1:])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("argument %s must be a whole number of at least 1 to price this tool" % spec[1:])
        return value

    def from_client(self, message):
        """(message to forward or None, answer to the client or None)."""
        if not isinstance(message, dict):
            return message, None
        if message.get("method") == "notifications/cancelled":
            self._finish(json.dumps((message.get("params") or {}).get("requestId"), sort_keys=True), success=False)
            return message, None
        if message.get("method") != "tools/call" or "id" not in message:
            return message, None
        params = message.get("params") or {}
        name = params.get("name")
        mapped = self.tools.get(name)
        if mapped is None:
            if self.unmapped == "refuse":
                return None, tool_error(message["id"], "tool %r has no price at this gateway; it was not run" % name)
            return message, None
        product, spec = mapped
        try:
            quantity = self.quantity(spec, params.get("arguments"))
        except ValueError as problem:
            return None, tool_error(message["id"], "tool %r was not run: %s" % (name, problem))
        try:
            decision = self.client.reserve(product, quantity, ttl=self.ttl)
        except errors.CreditsExhausted as refused:
            headroom = refused.headroom.funds if refused.headroom is not None else None
            return None, tool_error(
                message["id"], "tool %r was not run: out of credits (%s %s%s). Ask for a top-up or try a cheaper action." % (
                    name, refused.name, refused.subject, "" if headroom is None else "; %d credits left" % headroom))
        except errors.TollgateError as failure:
            return None, tool_error(message["id"], "tool %r was not run: the credit gate said %s" % (name, failure))
        with self.lock:
            self.pending[self._id(message)] = decision.hold
        self.log("reserved %s × %d for %s (hold %s)" % (product, quantity, name, decision.hold))
        return message, None

    def from_upstream(self, message):
        """Settles the hold of a tools/call the upstream answered; returns the message."""
        if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
            failed = "error" in message or bool((message.get("result") or {}).get("isError"))
            self._finish(self._id(message), success=not failed)
        return message

    def _finish(self, key, success):
        with self.lock:
            hold = self.pending.pop(key, None)
        if hold is None:
            return
        try:
            if success:
                self.client.commit(hold)
                self.log("committed hold %s" % hold)
            else:
                self.client.release(hold)
                self.log("released hold %s" % hold)
        except errors.TollgateError as failure:
            self.log("hold %s: %s" % (hold, failure))  # it ends at its deadline anyway

    def release_all(self):
        with self.lock:
            holds = list(self.pending.values())
            self.pending.clear()
        for hold in holds:
            try:
                self.client.release(hold)
            except errors.TollgateError:
                pass


class HTTPUpstream:
    """An MCP server reached over streamable HTTP: each message is POSTed; the answer is JSON,
    or an event stream of messages, or nothing (202) for a notification. The session id the
    server gives at initialize is sent back with every later message. Server-initiated streams
    (GET) are not opened: requests from the server to the client arrive only within answers."""

    def __init__(self, url, deliver, timeout=600):
        self.url, self.deliver, self.timeout = url, deliver, timeout
        self.session = None
        self.protocol = None

    def send(self, message):
        threading.Thread(target=self._post, args=(message,), name="tollgate-mcp-post", daemon=True).start()

    def _post(self, message):
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        if self.protocol:
            headers["MCP-Protocol-Version"] = self.protocol
        request = urllib.request.Request(self.url, data=json.dumps(message).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                self.session = response.headers.get("Mcp-Session-Id") or self.session
                kind = response.headers.get("Content-Type", "")
                if response.status == 202 or (isinstance(message, dict) and "id" not in message):
                    return  # a notification or an answer the client sent: nothing comes back
                if kind.startswith("text/event-stream"):
                    data = []
                    for raw in response:
                        line = raw.decode("utf-8", "replace").rstrip("\r\n")
                        if line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif not line and data:
                            self._answer("\n".join(data))
                            data = []
                    if data:
                        self._answer("\n".join(data))
                else:
                    body = response.read()
                    if body.strip():
                        self._answer(body.decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, ValueError) as failure:
            if isinstance(message, dict) and "id" in message:
                self.deliver({"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32603, "message": "upstream %s: %s" % (self.url, failure)}})

    def _answer(self, text):
        try:
            message = json.loads(text)
        except ValueError:
            return
        for item in message if isinstance(message, list) else [message]:
            if isinstance(item, dict) and isinstance(item.get("result"), dict) and "protocolVersion" in item["result"]:
                self.protocol = item["result"]["protocolVersion"]
            self.deliver(item)


def finish(gateway, client):
    """At exit: release what is still held, settle what was decided offline, say what could not be."""
    gateway.release_all()
    if client.failsafe is not None and client.settle() > 0:
        print("tollgate-mcp: %d offline spends could not be settled before exit (the gate is still unreachable): they are lost"
              % client.offline_pending, file=sys.stderr, flush=True)
    client.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tollgate-mcp", description="Gate an MCP server's tools/call with Tollgate (stdio).")
    upstreams = parser.add_mutually_exclusive_group(required=True)
    upstreams.add_argument("--upstream", help="the MCP server's command line (stdio), e.g. 'python3 server.py'")
    upstreams.add_argument("--upstream-url", help="the MCP server's streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp")
    parser.add_argument("--account", required=True)
    parser.add_argument("--member")
    parser.add_argument("--tool", action="append", type=parse_tool, default=[], metavar="NAME=PRODUCT[:QUANTITY]",
                        help="price a tool: QUANTITY is a number (default 1) or @ARGUMENT (repeatable)")
    parser.add_argument("--unmapped", choices=["pass", "refuse"], default="pass", help="what happens to tools not priced (default: pass)")
    parser.add_argument("--server", default=None, help="tollgated's gate port, HOST:PORT (also TOLLGATE_SERVER; default 127.0.0.1:7400)")
    parser.add_argument("--token-file", default=None, help="a gate token's file (also TOLLGATE_TOKEN_FILE)")
    parser.add_argument("--ttl", type=float, default=600, help="seconds a tool call may run before its hold expires (default 600)")
    parser.add_argument("--fail", choices=["closed", "open"], default="closed", help="when the gate is unreachable (tollgate.failsafe)")
    parser.add_argument("--offline-allowance", type=int, default=None, help="credits per account allowed offline under --fail open")
    parser.add_argument("--offline-rate", action="append", default=[], metavar="PRODUCT=CREDITS",
                        help="a product's credits per unit, for pricing offline before any online answer (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="log holds to standard error")
    options = parser.parse_args(argv)

    address = options.server or os.environ.get("TOLLGATE_SERVER", "127.0.0.1:7400")
    rates = {}
    for text in options.offline_rate:
        product, _, credits = text.partition("=")
        if not product or not credits.isdigit():
            parser.error("--offline-rate is PRODUCT=CREDITS, not %r" % text)
        rates[product] = int(credits)
    if options.fail == "open" and options.offline_allowance is None:
        parser.error("--fail open needs --offline-allowance")
    client = Client(address, token_file=options.token_file, account=options.account, member=options.member,
                    fail=options.fail, offline_allowance=options.offline_allowance, offline_rates=rates, retries=1)
    log = (lambda message: print("tollgate-mcp: " + message, file=sys.stderr, flush=True)) if options.verbose else None
    gateway = Gateway(client, {name: (product, quantity) for name, product, quantity in options.tool}, options.unmapped, options.ttl, log)
    out_lock = threading.Lock()

    def write(message_or_line):
        data = message_or_line if isinstance(message_or_line, bytes) else (json.dumps(message_or_line) + "\n").encode()
        with out_lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    if options.upstream_url:
        return serve_http(options.upstream_url, gateway, client, write)
    upstream = subprocess.Popen(shlex.split(options.upstream), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def pump_upstream():
        for line in upstream.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                write(line)
                continue
            gateway.from_upstream(message)
            write(line)
        # The upstream is gone: nothing more can be answered. Release what is held and exit,
        # rather than leave the client waiting on a pipe that will never speak again.
        finish(gateway, client)
        with out_lock:
            sys.stdout.flush()
        os._exit(upstream.wait() or 0)

    reader = threading.Thread(target=pump_upstream, name="tollgate-mcp-upstream", daemon=True)
    reader.start()
    try:
        for line in sys.stdin.buffer:
            try:
                message = json.loads(line)
            except ValueError:
                upstream.stdin.write(line)
                upstream.stdin.flush()
                continue
            if isinstance(message, list):
                # JSON-RPC batches (gone from MCP since 2025-06-18): a batched tools/call is
                # answered as a tool error, never run ungated; the rest passes through.
                passing = []
                for item in message:
                    if isinstance(item, dict) and item.get("method") == "tools/call" and "id" in item:
                        write(tool_error(item["id"], "tool calls in a JSON-RPC batch are not supported by tollgate-mcp"))
                    else:
                        passing.append(item)
                if passing:
                    upstream.stdin.write((json.dumps(passing) + "\n").encode())
                    upstream.stdin.flush()
                continue
            forward, answer = gateway.from_client(message)
            if answer is not None:
                write(answer)
            if forward is not None:
                upstream.stdin.write(line)
                upstream.stdin.flush()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        try:
            upstream.stdin.close()
        except OSError:
            pass
        try:
            upstream.wait(10)
        except subprocess.TimeoutExpired:
            upstream.kill()
        reader.join(5)
        finish(gateway, client)
    return upstream.returncode or 0


def serve_http(url, gateway, client, write):
    """The client's messages from stdin, to a streamable HTTP upstream, gated the same way."""

    def deliver(message):
        gateway.from_upstream(message)
        write(message)

    upstream = HTTPUpstream(url, deliver)
    try:
        for line in sys.stdin.buffer:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not JSON: nothing an HTTP upstream could take
            if isinstance(message, list):
                for item in message:
                    if isinstance(item, dict) and item.get("method") == "tools/call" and "id" in item:
                        write(tool_error(item["id"], "tool calls in a JSON-RPC batch are not supported by tollgate-mcp"))
                message = [item for item in message if not (isinstance(item, dict) and item.get("method") == "tools/call")]
                if message:
                    upstream.send(message)
                continue
            forward, answer = gateway.from_client(message)
            if answer is not None:
                write(answer)
            if forward is not None:
                upstream.send(forward)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        finish(gateway, client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
