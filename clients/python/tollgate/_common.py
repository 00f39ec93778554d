"""What the blocking and the asyncio client share: settings, TLS, frames, request ids, retry
policy, and the operations themselves."""

from __future__ import annotations

import functools
import inspect
import os
import ssl
import time
from typing import Any, List, Optional, Union

from . import errors, failsafe, ops, wire
from .gate import gated_function

DEFAULT_ADDRESS = "127.0.0.1:7400"
PROTOCOL_VERSION = 1
ROLES = {1: "read", 2: "gate", 3: "admin"}


def parse_address(address):
    if isinstance(address, tuple):
        return address[0], int(address[1])
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("address is HOST:PORT, e.g. 127.0.0.1:7400, not %r" % (address,))
    return host.strip("[]"), int(port)


def resolve_token(token, token_file):
    """The token: given, or from a file, or TOLLGATE_TOKEN / TOLLGATE_TOKEN_FILE, or the admin
    token a local tollgated wrote to ./tollgate-data/admin.token (as the CLI does); else none."""
    if token:
        return token
    path = token_file or os.environ.get("TOLLGATE_TOKEN_FILE")
    if not path and os.environ.get("TOLLGATE_TOKEN"):
        return os.environ["TOLLGATE_TOKEN"]
    if not path and os.path.exists(os.path.join("tollgate-data", "admin.token")):
        path = os.path.join("tollgate-data", "admin.token")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return ""


def tls_context(tls, ca_file, cert_file, key_file):
    """An SSLContext for TLS (and mTLS with a client certificate), or None for plaintext."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not (tls or ca_file or cert_file):
        return None
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def frame(opcode_name, request_id, body):
    return wire.HEADER.pack(wire.MAGIC, 1, wire.OPCODE_BY_NAME[opcode_name], 0, 0, request_id, len(body)) + body


def parse_header(data):
    magic, version, opcode, flags, status, request_id, length = wire.HEADER.unpack(data)
    if magic != wire.MAGIC or version != 1 or not flags & wire.RESPONSE_FLAG:
        raise wire.Malformed("bad response header")
    return opcode, status, request_id, length


def decode_body(opcode, status, body):
    """(opcode name, decoded value) of a response body."""
    name = wire.OPCODES.get(opcode)
    if name is None:
        raise wire.Malformed("unknown opcode %d" % opcode)
    reader = wire.Reader(body)
    value = wire.response_body(name, status).read(reader)
    reader.done()
    return name, value


def hello_request(client_name, token):
    writer = wire.Writer()
    wire.write_fields(wire.REQUESTS["HELLO"], writer,
                      [("minVersion", PROTOCOL_VERSION), ("maxVersion", PROTOCOL_VERSION), ("clientName", client_name), ("token", token)])
    return frame("HELLO", 1, writer.bytes())


def hello_result(status, value):
    """The server's HELLO answer as a Result (max_in_flight, identity, role, …), or raises."""
    info = ops.result("HELLO", status, value)
    info["role"] = ROLES.get(info["role"], info["role"])
    return info


def backoff(attempt):
    return min(1.0, 0.02 * (2 ** attempt))


def retryable(error):
    return isinstance(error, errors.ProtocolError) and error.status in errors.RETRYABLE


HEADER_SIZE = wire.HEADER.size
U32_MAX = (1 << 32) - 1


def next_request_id(pending, current):
    """(the id to use, the next one to try): ids 2 … 2³²−1 in turn, skipping those in flight
    (1 is HELLO's)."""
    while True:
        request_id = current
        current = current + 1 if current < U32_MAX else 2
        if request_id > 1 and request_id not in pending:
            return request_id, current


def retry_pause(attempt, retries, deadline, failure):
    """After failed attempt number `attempt`: how long to wait before the next, or raises
    `failure` when the retries or the deadline are spent."""
    pause = backoff(attempt)
    if attempt > retries or time.monotonic() + pause >= deadline:
        raise failure
    return pause


class Operations:
    """The settings both clients take, and every operation, as a method that builds its
    request (tollgate.ops) and hands it to `self.call`: the blocking client's returns the
    Result, the asyncio client's a coroutine. `hold_class` is Hold or AsyncHold."""

    hold_class = None

    def __init__(self, address: Union[str, tuple, None] = None, *, token: Optional[str] = None, token_file: Optional[str] = None,
                 tls: Union[bool, ssl.SSLContext] = False, ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                 key_file: Optional[str] = None, server_name: Optional[str] = None, timeout: float = 5.0, retries: int = 3,
                 client_name: str = "tollgate-python", account: Optional[str] = None, member: Optional[str] = None,
                 fail: str = "closed", offline_allowance: Any = None, offline_rates: Optional[dict] = None) -> None:
        """`address` is "HOST:PORT" or (host, port); by default TOLLGATE_SERVER, else
        127.0.0.1:7400. The token is `token`, else read from
        `token_file`, else TOLLGATE_TOKEN / TOLLGATE_TOKEN_FILE, else a local server's
        ./tollgate-data/admin.token. `tls=True` (or `ca_file`) speaks TLS; `cert_file` and
        `key_file` add a client certificate (mTLS); `server_name` is the name the server's
        certificate must carry when it is not the host. `timeout` is each call's deadline in
        seconds; `retries` how often a call is retried (with its key) after a dropped
        connection or `unavailable`. `account` and `member` are the defaults of the calls that
        take them. `fail` is what happens when the gate cannot be reached: "closed" (raise) or
        "open" (decide CHECK, RESERVE and SPEND locally within `offline_allowance` credits per
        account, priced by the last rate seen or `offline_rates`, and settle them with the gate
        later; tollgate.failsafe says exactly how)."""
        self.host, self.port = parse_address(address if address is not None else os.environ.get("TOLLGATE_SERVER", DEFAULT_ADDRESS))
        self.token = resolve_token(token, token_file)
        self.context = tls_context(tls, ca_file, cert_file, key_file)
        self.server_name = server_name
        self.timeout, self.retries, self.client_name = timeout, retries, client_name
        self.account, self.member = account, member
        if fail not in ("closed", "open"):
            raise ValueError("fail must be 'closed' or 'open', not %r" % (fail,))
        if fail == "open" and offline_allowance is None:
            raise ValueError("fail='open' needs offline_allowance: the credits per account the client may allow while the gate is unreachable")
        self.fail = fail
        self.failsafe = failsafe.FailSafe(offline_allowance, offline_rates) if fail == "open" else None
        self._connection = None
        self._closed = False

    def _deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def hold(self, product: str, quantity: int = 1, *, account: Optional[str] = None, member: Optional[str] = None, ttl: float = 60,
             keepalive: bool = False, key: Optional[str] = None, timeout: Optional[float] = None, on_expiry: str = "raise") -> Any:
        """A hold as a context manager (`with`, or `async with` on the asyncio client): reserves
        on enter (raising CreditsExhausted and the other refusals), commits on a clean exit —
        what `hold.use(...)` recorded, or the whole hold — and releases when the block raises.
        `keepalive=True` extends it every ttl/3 while the block runs.

        A hold that outlived its TTL was released by the server: its credits went back and the
        work was not charged. `on_expiry` says what the exit does then: "raise" (the default)
        raises tollgate.HoldExpired, so the caller decides (charge, log, alert); "spend" charges
        what was used with a SPEND instead (a quantity: the one `use(quantity=…)` gave, or the
        hold's) — best effort, refused like any spend if the credits are gone meanwhile, and
        raising HoldExpired when the usage was given in credits. `hold.spent_after_expiry` says
        which happened."""
        account, member = self._who(account, member)
        return self.hold_class(self, account, member, product, quantity, ttl, keepalive, key, timeout, on_expiry)

    def gated(self, product: str, quantity: Any = 1, *, account: Any = None, member: Any = None, ttl: float = 60, keepalive: bool = False) -> Any:
        """A decorator for tool functions (plain ones on Client, async ones on AsyncClient):
        each call runs inside `hold(...)`. `quantity`, `account` and `member` may be callables
        given the call's arguments."""
        return functools.partial(gated_function, self, product, quantity, account, member, ttl, keepalive)

    def _who(self, account, member):
        account = account if account is not None else self.account
        if account is None:
            raise ValueError("no account given, and the client has no default account")
        return account, member if member is not None else self.member

    def ping(self, timeout: Optional[float] = None) -> Any:
        return self.call(ops.ping(), timeout)

    def check(self, product: str, quantity: int = 1, *, account: Optional[str] = None, member: Optional[str] = None,
              timeout: Optional[float] = None) -> Any:
        account, member = self._who(account, member)
        return self.call(ops.check(account, product, quantity, member), timeout)

    def reserve(self, product: str, quantity: int = 1, *, account: Optional[str] = None, member: Optional[str] = None, ttl: float = 60,
                key: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        account, member = self._who(account, member)
        return self.call(ops.reserve(account, product, quantity, member, ttl, key), timeout)

    def commit(self, hold: int, *, quantity: Optional[int] = None, credits: Optional[int] = None, final: bool = True,
               account: Optional[str] = None, key: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        account, _ = self._who(account, None)
        if self.failsafe is not None and self.failsafe.is_local(hold):
            return self._immediate(lambda: self.failsafe.commit(hold, quantity, credits, final))
        return self.call(ops.commit(account, hold, quantity, credits, final, key), timeout)

    def release(self, hold: int, *, account: Optional[str] = None, key: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        account, _ = self._who(account, None)
        if self.failsafe is not None and self.failsafe.is_local(hold):
            return self._immediate(lambda: self.failsafe.release(hold))
        return self.call(ops.release(account, hold, key), timeout)

    def extend(self, hold: int, ttl: float, *, account: Optional[str] = None, key: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        account, _ = self._who(account, None)
        if self.failsafe is not None and self.failsafe.is_local(hold):
            return self._immediate(lambda: ops.Result(hold=hold, deadline=None, headroom=None, offline=True))
        return self.call(ops.extend(account, hold, ttl, key), timeout)

    @property
    def overspent(self) -> list:
        """Offline spends the gate refused when they were settled (fail="open"): (request, refusal)."""
        return [] if self.failsafe is None else list(self.failsafe.overspent)

    @property
    def offline_pending(self) -> int:
        """Offline spends not yet settled with the gate (fail="open")."""
        return 0 if self.failsafe is None else len(self.failsafe.pending)

    def reserve_metered(self, product: str, dimensions: Any, *, account: Optional[str] = None, member: Optional[str] = None, ttl: float = 60,
                        key: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        """Holds the cost of `dimensions` ({"input": 8000, "output": 4000}) at the product's dimension rates."""
        account, member = self._who(account, member)
        return self.call(ops.reserve_metered(account, product, dimensions, member, ttl, key), timeout)

    def commit_metered(self, hold: int, dimensions: Any, *, final: bool = True, account: Optional[str] = None, key: Optional[str] = None,
                       timeout: Optional[float] = None) -> Any:
        """Commits a metered hold's actual quantities, priced at the rates of its reserve."""
        account, _ = self._who(account, None)
        return self.call(ops.commit_metered(account, hold, dimensions, final, key), timeout)

    def spend_metered(self, product: str, dimensions: Any, *, account: Optional[str] = None, member: Optional[str] = None,
                      key: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        account, member = self._who(account, member)
        return self.call(ops.spend_metered(account, product, dimensions, member, key), timeout)

    def spend(self, product: str, quantity: int = 1, *, account: Optional[str] = None, member: Optional[str] = None,
              key: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        account, member = self._who(account, member)
        return self.call(ops.spend(account, product, quantity, member, key), timeout)

    def balance(self, *, account: Optional[str] = None, member: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        """The balance (a tollgate.Balance; a coroutine of one on AsyncClient)."""
        account, member = self._who(account, member)
        return self.call(ops.balance(account, member), timeout)

    def balance_at(self, at: Any, *, account: Optional[str] = None, member: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        """The balance as it was at `at` (a datetime, or µs since the epoch)."""
        account, member = self._who(account, member)
        return self.call(ops.balance_at(account, at, member), timeout)

    def batch(self, requests: List[Any], timeout: Optional[float] = None) -> Any:
        """Gate requests built with tollgate.ops (check, reserve, commit, release, extend,
        spend) in one frame; per item, its Result or its exception (not raised)."""
        return self.call(ops.batch(requests), timeout)


def _admin(builder):
    def method(self, *args, timeout=None, **kwargs):
        return self.call(builder(*args, **kwargs), timeout)
    method.__name__ = builder.__name__
    method.__doc__ = "%s%s — see tollgate.ops.%s." % (builder.__name__, inspect.signature(builder), builder.__name__)
    return method


ADMIN_OPERATIONS = [
    "create_account", "set_parent", "set_overage", "set_period", "set_account_cap", "add_member", "remove_member", "set_member_cap",
    "create_group", "delete_group", "set_group_cap", "add_to_group", "remove_from_group", "add_grant", "void_grant", "set_rate",
    "set_account_rate", "set_subscription", "set_seats", "set_alert", "remove_alert", "set_auto_recharge", "define_plan", "provision",
    "set_cap", "set_concurrency", "set_metered_rate",
]
for _name in ADMIN_OPERATIONS:
    setattr(Operations, _name, _admin(getattr(ops, _name)))
