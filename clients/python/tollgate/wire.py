"""The Tollgate wire protocol, version 1, written from proto/PROTOCOL.md alone.

Frames are decoded into (header, opcode name, status, fields) and encoded back; `meaning()`
renders a decoded frame the way proto/vectors.json writes its "meaning" column (§8).
"""

import struct

MAGIC = 0x5447
HEADER = struct.Struct(">HBBHHII")  # magic, version, opcode, flags, status, request id, body length
RESPONSE_FLAG = 0x0001

OPCODES = {
    0x01: "HELLO", 0x02: "PING", 0x03: "ERROR", 0x04: "EVENT", 0x19: "SUBSCRIBE", 0x10: "CHECK", 0x11: "RESERVE", 0x12: "COMMIT", 0x13: "RELEASE",
    0x14: "EXTEND", 0x15: "SPEND", 0x16: "BALANCE", 0x17: "BATCH", 0x18: "BALANCE_AT", 0x20: "CREATE_ACCOUNT", 0x21: "SET_PARENT",
    0x22: "SET_OVERAGE", 0x23: "SET_PERIOD", 0x24: "SET_ACCOUNT_CAP", 0x25: "ADD_MEMBER", 0x26: "REMOVE_MEMBER",
    0x27: "SET_MEMBER_CAP", 0x28: "CREATE_GROUP", 0x29: "DELETE_GROUP", 0x2A: "SET_GROUP_CAP", 0x2B: "ADD_TO_GROUP",
    0x2C: "REMOVE_FROM_GROUP", 0x2D: "ADD_GRANT", 0x2E: "VOID_GRANT", 0x2F: "SET_RATE", 0x30: "SET_ACCOUNT_RATE",
    0x31: "SET_SUBSCRIPTION", 0x32: "SET_SEATS", 0x33: "SET_ALERT", 0x34: "REMOVE_ALERT", 0x35: "SET_AUTO_RECHARGE",
    0x36: "DEFINE_PLAN", 0x37: "PROVISION", 0x1A: "FAMILY_TRANSFER", 0x38: "MOVE_FAMILY_OUT", 0x39: "MOVE_FAMILY_IN",
    0x1B: "NODE_FILES", 0x1C: "READ_NODE_FILE", 0x3A: "SET_CAP", 0x3B: "SET_CONCURRENCY",
    0x1D: "RESERVE_METERED", 0x1E: "SPEND_METERED", 0x1F: "COMMIT_METERED", 0x3C: "SET_METERED_RATE",
}
OPCODE_BY_NAME = {name: code for code, name in OPCODES.items()}

LEDGER_STATUS = [
    None, "insufficientFunds", "memberCap", "groupCap", "accountCap", "parentCap", "unknownProduct", "unknownAccount",
    "unknownMember", "unknownGroup", "unknownHold", "unknownGrant", "holdExpired", "holdCommitted", "holdReleased",
    "idempotencyConflict", "limitReached", "invalidArgument", "alreadyExists", "inUse", "amountOutOfRange", "grantNotLive",
    "notInGroup", "familyMoved", "concurrencyLimit",
]
PROTOCOL_STATUS = {
    100: "malformedFrame", 101: "unsupportedVersion", 102: "unknownOpcode", 103: "frameTooLarge", 104: "tooManyInFlight",
    105: "tooManyConnections", 106: "idleTimeout", 107: "handshakeRequired", 108: "unavailable", 109: "unauthorized",
    110: "forbidden", 111: "internalError", 112: "badFrame", 113: "notLeader",
}
LEVELS = ["request", "member", "group", "account", "parent", "ledger"]
WINDOWS = ["period", "minute", "hour", "day"]
MODES = ["hard", "soft"]


class Malformed(Exception):
    """The bytes are not a valid frame or body."""


def quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, size):
        if self.at + size > len(self.data):
            raise Malformed("cut short")
        piece = self.data[self.at:self.at + size]
        self.at += size
        return piece

    def int(self, fmt):
        return struct.unpack(">" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self):
        return self.take(self.int("H")).decode("utf-8")

    def present(self):
        flag = self.int("B")
        if flag > 1:
            raise Malformed("presence byte %d" % flag)
        return flag == 1

    def done(self):
        if self.at != len(self.data):
            raise Malformed("%d bytes left over" % (len(self.data) - self.at))


class Writer:
    def __init__(self):
        self.parts = []

    def int(self, fmt, value):
        self.parts.append(struct.pack(">" + fmt, value))

    def string(self, text):
        data = text.encode("utf-8")
        self.int("H", len(data))
        self.parts.append(data)

    def bytes(self):
        return b"".join(self.parts)


# Each field type: (read(reader) -> value, write(writer, value), render(value) -> text).
def _scalar(fmt):
    return (lambda r: r.int(fmt), lambda w, v: w.int(fmt, v), str)


def _optional(kind):
    read, write, render = kind
    return (
        lambda r: read(r) if r.present() else None,
        lambda w, v: (w.int("B", 0) if v is None else (w.int("B", 1), write(w, v))),
        lambda v: "-" if v is None else render(v),
    )


U8, U16, U32, U64, I32, I64 = (_scalar(f) for f in "BHIQiq")
BOOL = (lambda r: bool(r.int("B")) if r.data[r.at:r.at + 1] in (b"\x00", b"\x01") else _bad("bool"),
        lambda w, v: w.int("B", 1 if v else 0), lambda v: "true" if v else "false")
STR = (lambda r: r.string(), lambda w, v: w.string(v), quote)
OPT_STR, OPT_I64, OPT_U64 = _optional(STR), _optional(I64), _optional(U64)
# A u16 count of (string name, u64 bytes): NODE_FILES' answer.
NODE_FILES = (lambda r: [(r.string(), r.int("Q")) for _ in range(r.int("H"))],
              lambda w, v: (w.int("H", len(v)), [(w.string(n), w.int("Q", b)) for n, b in v]),
              lambda v: "[" + ",".join("(%s,%d)" % (quote(n), b) for n, b in v) + "]")
# A u32 length, then that many bytes (a family transfer); rendered as 0x and hex.
BYTES = (lambda r: bytes(r.take(r.int("I"))), lambda w, v: (w.int("I", len(v)), w.parts.append(bytes(v))), lambda v: "0x" + bytes(v).hex())


def _bad(what):
    raise Malformed(what)


def _tagged(names, with_value):
    """u8 kind then i64 value, rendered name or name(value)."""
    def read(r):
        kind, value = r.int("B"), r.int("q")
        if kind >= len(names):
            raise Malformed("kind %d" % kind)
        return (kind, value)
    def render(v):
        return names[v[0]] if v[0] not in with_value else "%s(%d)" % (names[v[0]], v[1])
    return (read, lambda w, v: (w.int("B", v[0]), w.int("q", v[1])), render)


OVERAGE = _tagged(["deny", "overdraft", "finish"], {1, 2})
AMOUNT = _tagged(["held", "quantity", "credits"], {1, 2})


def _read_period(r):
    kind, anchor, length = r.int("B"), r.int("q"), r.int("q")
    if kind > 1:
        raise Malformed("period kind %d" % kind)
    return (kind, anchor, length)


PERIOD = (_read_period, lambda w, v: (w.int("B", v[0]), w.int("q", v[1]), w.int("q", v[2])),
          lambda v: "monthly(anchor=%d)" % v[1] if v[0] == 0 else "fixed(anchor=%d,length=%d)" % (v[1], v[2]))
OPT_PERIOD = _optional(PERIOD)


def _read_subscription(r):
    scope, per_seat = r.int("B"), r.int("q")
    if scope > 1:
        raise Malformed("subscription scope %d" % scope)
    prorate = BOOL[0](r)
    removal = r.int("B")
    if removal > 1:
        raise Malformed("removal %d" % removal)
    return (scope, per_seat, prorate, removal, r.int("q"), r.int("i"))


def _write_subscription(w, v):
    w.int("B", v[0]); w.int("q", v[1]); w.int("B", 1 if v[2] else 0); w.int("B", v[3]); w.int("q", v[4]); w.int("i", v[5])


SUBSCRIPTION = (_read_subscription, _write_subscription,
                lambda v: "subscription(scope=%d,creditsPerSeat=%d,prorate=%s,removal=%d,rolloverCap=%d,priority=%d)"
                % (v[0], v[1], "true" if v[2] else "false", v[3], v[4], v[5]))
OPT_SUBSCRIPTION = _optional(SUBSCRIPTION)
THRESHOLD = _tagged(["credits", "percent", "depleted"], {0, 1})


def _read_recharge(r):
    return (r.int("q"), r.int("q"), OPT_I64[0](r), r.int("q"), r.int("i"), OPT_I64[0](r))


def _write_recharge(w, v):
    w.int("q", v[0]); w.int("q", v[1]); OPT_I64[1](w, v[2]); w.int("q", v[3]); w.int("i", v[4]); OPT_I64[1](w, v[5])


RECHARGE = (_read_recharge, _write_recharge,
            lambda v: "(below=%d,amount=%d,upTo=%s,maxPerPeriod=%d,priority=%d,expiresAfter=%s)"
            % (v[0], v[1], OPT_I64[2](v[2]), v[3], v[4], OPT_I64[2](v[5])))
OPT_RECHARGE = _optional(RECHARGE)


def _list(count_fmt, read_item, write_item, render_item):
    """A count, then that many items; rendered [item,item]."""
    return (lambda r: [read_item(r) for _ in range(r.int(count_fmt))],
            lambda w, items: (w.int(count_fmt, len(items)), [write_item(w, item) for item in items]),
            lambda items: "[" + ",".join(render_item(item) for item in items) + "]")


PLAN_GRANTS = _list("B",
                    lambda r: (r.int("q"), r.int("i"), r.int("B"), OPT_I64[0](r)),
                    lambda w, g: (w.int("q", g[0]), w.int("i", g[1]), w.int("B", g[2]), OPT_I64[1](w, g[3])),
                    lambda g: "(amount=%d,priority=%d,source=%d,lifetime=%s)" % (g[0], g[1], g[2], OPT_I64[2](g[3])))
PLAN_ALERTS = _list("B",
                    lambda r: (r.string(), THRESHOLD[0](r)),
                    lambda w, a: (w.string(a[0]), THRESHOLD[1](w, a[1])),
                    lambda a: "(%s,%s)" % (quote(a[0]), THRESHOLD[2](a[1])))
MEMBERS = _list("H", lambda r: r.string(), lambda w, m: w.string(m), quote)


def _read_scope(r):
    kind = r.int("B")
    if kind == 0:
        return None
    if kind == 1:
        return r.string()
    raise Malformed("scope kind %d" % kind)


SCOPE = (_read_scope, lambda w, v: w.int("B", 0) if v is None else (w.int("B", 1), w.string(v)),
         lambda v: "pool" if v is None else "member(%s)" % quote(v))


def _read_headroom(r):
    mask = r.int("B")
    if mask & ~0x0F:
        raise Malformed("headroom mask")
    h = {}
    if mask & 1: h["member"] = r.int("q")
    if mask & 2: h["group"] = (r.int("q"), r.string())
    if mask & 4: h["account"] = r.int("q")
    if mask & 8: h["parent"] = r.int("q")
    h["funds"] = r.int("q")
    return h


def _write_headroom(w, h):
    mask = sum(bit for bit, name in ((1, "member"), (2, "group"), (4, "account"), (8, "parent")) if name in h)
    w.int("B", mask)
    if "member" in h: w.int("q", h["member"])
    if "group" in h: w.int("q", h["group"][0]); w.string(h["group"][1])
    if "account" in h: w.int("q", h["account"])
    if "parent" in h: w.int("q", h["parent"])
    w.int("q", h["funds"])


def _render_headroom(h):
    parts = []
    for name in ("member", "group", "account", "parent"):
        if name in h:
            parts.append("group=%d(%s)" % (h[name][0], quote(h[name][1])) if name == "group" else "%s=%d" % (name, h[name]))
    parts.append("funds=%d" % h["funds"])
    return "{" + ",".join(parts) + "}"


HEADROOM = (_read_headroom, _write_headroom, _render_headroom)


def _named(names, what):
    """A u8 that indexes `names`; the value is the name."""
    def read(r):
        raw = r.int("B")
        if raw >= len(names):
            raise Malformed("%s %d" % (what, raw))
        return names[raw]
    return (read, lambda w, v: w.int("B", names.index(v)), str)


WINDOW, MODE, LEVEL = _named(WINDOWS, "window"), _named(MODES, "mode"), _named(LEVELS, "level")


def _target(kinds):
    """SET_CAP's and SET_CONCURRENCY's target: a u8 kind and a string id (empty unless the kind names one).
    The value is the kind's name, or (name, id) for a kind that names one."""
    def read(r):
        raw, ident = r.int("B"), r.string()
        if raw >= len(kinds):
            raise Malformed("target kind %d" % raw)
        name, named = kinds[raw]
        if not named and ident:
            raise Malformed("target %s takes no id" % name)
        return (name, ident) if named else name

    def write(w, v):
        name, ident = v if isinstance(v, tuple) else (v, "")
        w.int("B", [k for k, _ in kinds].index(name)); w.string(ident)
    return (read, write, lambda v: "%s(%s)" % (v[0], quote(v[1])) if isinstance(v, tuple) else v)


def _read_products(r):
    if r.at == len(r.data):
        return []
    count = r.int("B")
    if count == 0:
        raise Malformed("product count 0")
    return [r.string() for _ in range(count)]


# ADD_GRANT's trailing products: absent for a grant usable for any product, else a u8 count (1 or more) and the product ids.
PRODUCTS = (_read_products,
            lambda w, v: (w.int("B", len(v)), [w.string(p) for p in v]) if v else None,
            lambda v: "[" + ",".join(quote(p) for p in v) + "]")

CAP_TARGET = _target([("account", False), ("member", True), ("group", True)])
CONCURRENCY_TARGET = _target([("account", False), ("eachMember", False), ("member", True)])
OPT_HEADROOM = _optional(HEADROOM)

DECISION_REQUEST = [("account", STR), ("member", OPT_STR), ("product", STR), ("quantity", I64)]
# A metered request's dimensions: a u8 count of (string dimension, i64 quantity); rendered ["input"=8000,...].
DIMENSIONS = (lambda r: [(r.string(), r.int("q")) for _ in range(r.int("B"))],
              lambda w, v: (w.int("B", len(v)), [(w.string(d), w.int("q", q)) for d, q in v]),
              lambda v: "[" + ",".join("%s=%d" % (quote(d), q) for d, q in v) + "]")
METERED_REQUEST = [("account", STR), ("member", OPT_STR), ("product", STR), ("dimensions", DIMENSIONS)]
HOLD_REF = [("account", STR), ("hold", U64)]

REQUESTS = {
    "HELLO": [("minVersion", U8), ("maxVersion", U8), ("clientName", STR), ("token", STR)],
    "PING": [],
    "CHECK": DECISION_REQUEST,
    "RESERVE": [("key", STR)] + DECISION_REQUEST + [("ttlMicroseconds", I64)],
    "COMMIT": [("key", STR)] + HOLD_REF + [("amount", AMOUNT), ("final", BOOL)],
    "RELEASE": [("key", STR)] + HOLD_REF,
    "EXTEND": [("key", STR)] + HOLD_REF + [("ttlMicroseconds", I64)],
    "SPEND": [("key", STR)] + DECISION_REQUEST,
    "BALANCE": [("account", STR), ("member", OPT_STR)],
    "BALANCE_AT": [("account", STR), ("member", OPT_STR), ("at", I64)],
    "CREATE_ACCOUNT": [("key", STR), ("account", STR), ("parent", OPT_STR), ("overage", OVERAGE), ("period", OPT_PERIOD)],
    "SET_PARENT": [("key", STR), ("account", STR), ("parent", OPT_STR)],
    "SET_OVERAGE": [("key", STR), ("account", STR), ("overage", OVERAGE)],
    "SET_PERIOD": [("key", STR), ("account", STR), ("period", PERIOD)],
    "SET_ACCOUNT_CAP": [("key", STR), ("account", STR), ("limit", OPT_I64)],
    "ADD_MEMBER": [("key", STR), ("account", STR), ("member", STR)],
    "REMOVE_MEMBER": [("key", STR), ("account", STR), ("member", STR)],
    "SET_MEMBER_CAP": [("key", STR), ("account", STR), ("member", STR), ("limit", OPT_I64)],
    "CREATE_GROUP": [("key", STR), ("account", STR), ("group", STR)],
    "DELETE_GROUP": [("key", STR), ("account", STR), ("group", STR)],
    "SET_GROUP_CAP": [("key", STR), ("account", STR), ("group", STR), ("limit", OPT_I64)],
    "ADD_TO_GROUP": [("key", STR), ("account", STR), ("group", STR), ("member", STR)],
    "REMOVE_FROM_GROUP": [("key", STR), ("account", STR), ("group", STR), ("member", STR)],
    "ADD_GRANT": [("key", STR), ("account", STR), ("scope", SCOPE), ("amount", I64), ("priority", I32),
                  ("effectiveAt", I64), ("expiresAt", I64), ("source", U8), ("products", PRODUCTS)],
    "VOID_GRANT": [("key", STR), ("account", STR), ("grant", U64)],
    "SET_RATE": [("key", STR), ("product", STR), ("creditsPerUnit", I64), ("effectiveAt", I64)],
    "SET_ACCOUNT_RATE": [("key", STR), ("account", STR), ("product", STR), ("creditsPerUnit", OPT_I64), ("effectiveAt", I64)],
    "SET_SUBSCRIPTION": [("key", STR), ("account", STR), ("terms", OPT_SUBSCRIPTION)],
    "SET_SEATS": [("key", STR), ("account", STR), ("seats", I64), ("effectiveAt", I64)],
    "SET_ALERT": [("key", STR), ("account", STR), ("id", STR), ("member", OPT_STR), ("threshold", THRESHOLD)],
    "REMOVE_ALERT": [("key", STR), ("account", STR), ("id", STR)],
    "SET_AUTO_RECHARGE": [("key", STR), ("account", STR), ("recharge", OPT_RECHARGE)],
    "SUBSCRIBE": [("after", OPT_U64), ("account", OPT_STR)],
    "DEFINE_PLAN": [("key", STR), ("name", STR), ("overage", OVERAGE), ("subscription", OPT_SUBSCRIPTION), ("grants", PLAN_GRANTS),
                    ("alerts", PLAN_ALERTS), ("recharge", OPT_RECHARGE)],
    "PROVISION": [("key", STR), ("account", STR), ("plan", STR), ("parent", OPT_STR), ("seats", I64), ("members", MEMBERS)],
    "FAMILY_TRANSFER": [("account", STR)],
    "MOVE_FAMILY_OUT": [("key", STR), ("account", STR), ("destination", STR)],
    "MOVE_FAMILY_IN": [("key", STR), ("account", STR), ("transfer", BYTES)],
    "NODE_FILES": [],
    "READ_NODE_FILE": [("name", STR), ("offset", U64), ("length", U32)],
    "RESERVE_METERED": [("key", STR)] + METERED_REQUEST + [("ttlMicroseconds", I64)],
    "SPEND_METERED": [("key", STR)] + METERED_REQUEST,
    "COMMIT_METERED": [("key", STR), ("account", STR), ("hold", U64), ("dimensions", DIMENSIONS), ("final", BOOL)],
    "SET_METERED_RATE": [("key", STR), ("product", STR), ("dimension", STR), ("credits", I64), ("per", I64), ("effectiveAt", I64)],
    "SET_CAP": [("key", STR), ("account", STR), ("target", CAP_TARGET), ("window", WINDOW), ("mode", MODE), ("limit", OPT_I64)],
    "SET_CONCURRENCY": [("key", STR), ("account", STR), ("target", CONCURRENCY_TARGET), ("limit", OPT_I64)],
}

DECISION = [("hold", OPT_U64), ("cost", I64), ("creditsPerUnit", I64), ("deadline", OPT_I64), ("headroom", HEADROOM)]
SUCCESS = {
    "HELLO": [("version", U8), ("serverName", STR), ("maxFrameBody", U32), ("maxInFlight", U16), ("maxBatchItems", U16), ("identity", STR), ("role", U8)],
    "PING": [], "CHECK": DECISION, "RESERVE": DECISION, "SPEND": DECISION, "RESERVE_METERED": DECISION, "SPEND_METERED": DECISION,
    "COMMIT_METERED": [("hold", U64), ("committed", I64), ("returned", I64), ("stillHeld", I64), ("headroom", HEADROOM)],
    "COMMIT": [("hold", U64), ("committed", I64), ("returned", I64), ("stillHeld", I64), ("headroom", HEADROOM)],
    "RELEASE": [("hold", U64), ("released", I64), ("headroom", HEADROOM)],
    "EXTEND": [("hold", U64), ("deadline", I64), ("headroom", HEADROOM)],
    "ADD_GRANT": [("grant", U64)],
    "SUBSCRIBE": [("nextSequence", U64)],
    "FAMILY_TRANSFER": [("transfer", BYTES)],
    "NODE_FILES": [("files", NODE_FILES)],
    "READ_NODE_FILE": [("transfer", BYTES)],
}
REFUSAL = [("level", (lambda r: LEVELS[r.int("B")], lambda w, v: w.int("B", LEVELS.index(v)), str)),
           ("subject", STR), ("headroom", OPT_HEADROOM)]
ERROR = [("message", STR)]


def read_fields(schema, r):
    return [(name, kind[0](r)) for name, kind in schema]


def write_fields(schema, w, fields):
    for (name, kind), (_, value) in zip(schema, fields):
        kind[1](w, value)


def render_fields(schema, fields):
    return ["%s=%s" % (name, kind[2](value)) for (name, kind), (_, value) in zip(schema, fields)]


# The balance body, rendered as its own sequence (§5).
def read_balance(r):
    b = {"account": r.string(), "member": OPT_STR[0](r), "at": r.int("q"), "periodStart": r.int("q"),
         "periodEnd": r.int("q"), "headroom": _read_headroom(r), "levels": [], "grants": []}
    for _ in range(r.int("H")):
        b["levels"].append((LEVELS[r.int("B")], r.string(), OPT_I64[0](r), r.int("q"), r.int("q"), OPT_I64[0](r)))
    b["funds"] = (r.int("q"), r.int("q"), r.int("q"), OVERAGE[0](r), r.int("q"), r.int("q"))
    for _ in range(r.int("H")):
        b["grants"].append((r.int("Q"), r.string(), _read_scope(r), *[r.int("q") for _ in range(6)], r.int("i"),
                            r.int("q"), r.int("q"), r.int("B"), r.int("B")))
    b["openHolds"] = r.int("I")
    b["subscription"] = None
    if r.present():
        sub = {"terms": SUBSCRIPTION[0](r), "seats": r.int("q"), "periodStart": r.int("q"), "periodEnd": r.int("q")}
        kind = r.int("B")
        if kind > 2:
            raise Malformed("next terms kind %d" % kind)
        sub["next"] = (kind, SUBSCRIPTION[0](r) if kind == 2 else None)
        sub["pendingSeats"] = (r.int("q"), r.int("q")) if r.present() else None
        b["subscription"] = sub
    b["burn"] = (r.int("q"), r.int("q"))
    b["caps"] = []
    for _ in range(r.int("H")):
        level = r.int("B")
        if level >= len(b["levels"]):
            raise Malformed("cap of level %d" % level)
        b["caps"].append((level, WINDOW[0](r), MODE[0](r), r.int("q"), r.int("q"), r.int("q")))
    b["openHoldsLimit"] = OPT_I64[0](r)
    b["grantProducts"] = []
    for _ in range(r.int("H")):
        index = r.int("H")
        if index >= len(b["grants"]):
            raise Malformed("products of grant %d" % index)
        b["grantProducts"].append((index, [r.string() for _ in range(r.int("B"))]))
    return b


def write_balance(w, b):
    w.string(b["account"]); OPT_STR[1](w, b["member"])
    for name in ("at", "periodStart", "periodEnd"):
        w.int("q", b[name])
    _write_headroom(w, b["headroom"])
    w.int("H", len(b["levels"]))
    for level, subject, limit, consumed, held, headroom in b["levels"]:
        w.int("B", LEVELS.index(level)); w.string(subject); OPT_I64[1](w, limit)
        w.int("q", consumed); w.int("q", held); OPT_I64[1](w, headroom)
    member, pool, parent_pool, overage, overdrawn, overdraft_held = b["funds"]
    for value in (member, pool, parent_pool):
        w.int("q", value)
    OVERAGE[1](w, overage); w.int("q", overdrawn); w.int("q", overdraft_held)
    w.int("H", len(b["grants"]))
    for g in b["grants"]:
        w.int("Q", g[0]); w.string(g[1]); SCOPE[1](w, g[2])
        for value in g[3:9]:
            w.int("q", value)
        w.int("i", g[9]); w.int("q", g[10]); w.int("q", g[11]); w.int("B", g[12]); w.int("B", g[13])
    w.int("I", b["openHolds"])
    sub = b["subscription"]
    if sub is None:
        w.int("B", 0)
    else:
        w.int("B", 1)
        SUBSCRIPTION[1](w, sub["terms"])
        w.int("q", sub["seats"]); w.int("q", sub["periodStart"]); w.int("q", sub["periodEnd"])
        w.int("B", sub["next"][0])
        if sub["next"][0] == 2:
            SUBSCRIPTION[1](w, sub["next"][1])
        if sub["pendingSeats"] is None:
            w.int("B", 0)
        else:
            w.int("B", 1); w.int("q", sub["pendingSeats"][0]); w.int("q", sub["pendingSeats"][1])
    w.int("q", b["burn"][0]); w.int("q", b["burn"][1])
    w.int("H", len(b["caps"]))
    for level, window, mode, limit, used, window_end in b["caps"]:
        w.int("B", level); WINDOW[1](w, window); MODE[1](w, mode); w.int("q", limit); w.int("q", used); w.int("q", window_end)
    OPT_I64[1](w, b["openHoldsLimit"])
    w.int("H", len(b["grantProducts"]))
    for index, products in b["grantProducts"]:
        w.int("H", index); w.int("B", len(products))
        for product in products:
            w.string(product)


def render_balance(b):
    out = ["account=" + quote(b["account"]), "member=" + OPT_STR[2](b["member"]), "at=%d" % b["at"],
           "periodStart=%d" % b["periodStart"], "periodEnd=%d" % b["periodEnd"], "headroom=" + _render_headroom(b["headroom"])]
    for level, subject, limit, consumed, held, headroom in b["levels"]:
        out.append("level=%s(%s,limit=%s,consumed=%d,held=%d,headroom=%s)" % (
            level, quote(subject), OPT_I64[2](limit), consumed, held, OPT_I64[2](headroom)))
    member, pool, parent_pool, overage, overdrawn, overdraft_held = b["funds"]
    out.append("funds=(member=%d,pool=%d,parentPool=%d,overage=%s,overdrawn=%d,overdraftHeld=%d)" % (
        member, pool, parent_pool, OVERAGE[2](overage), overdrawn, overdraft_held))
    for g in b["grants"]:
        out.append("grant=(%d,%s,%s,amount=%d,available=%d,held=%d,consumed=%d,expired=%d,voided=%d,priority=%d,"
                   "effectiveAt=%d,expiresAt=%d,source=%d,state=%d)" % (g[0], quote(g[1]), SCOPE[2](g[2]), *g[3:]))
    out.append("openHolds=%d" % b["openHolds"])
    sub = b["subscription"]
    if sub is None:
        out.append("subscription=-")
    else:
        kind, terms = sub["next"]
        following = "unchanged" if kind == 0 else ("ends" if kind == 1 else SUBSCRIPTION[2](terms))
        pending = "-" if sub["pendingSeats"] is None else "%d@%d" % (sub["pendingSeats"][1], sub["pendingSeats"][0])
        out.append("subscription=(%s,seats=%d,periodStart=%d,periodEnd=%d,next=%s,pendingSeats=%s)" % (
            SUBSCRIPTION[2](sub["terms"]), sub["seats"], sub["periodStart"], sub["periodEnd"], following, pending))
    out.append("burn=(lastMinute=%d,lastHour=%d)" % b["burn"])
    for cap in b["caps"]:
        out.append("cap=(level=%d,window=%s,mode=%s,limit=%d,used=%d,windowEnd=%d)" % cap)
    out.append("openHoldsLimit=" + OPT_I64[2](b["openHoldsLimit"]))
    for index, products in b["grantProducts"]:
        out.append("grantProducts=(grant=%d,[%s])" % (index, ",".join(quote(p) for p in products)))
    return out


EVENT_HEAD = [("sequence", U64), ("at", I64), ("account", STR), ("member", OPT_STR)]
EVENT_KINDS = [
    [("alert", STR), ("threshold", I64), ("balance", I64)],
    [("depleted", STR), ("balance", I64)],
    [("recharged", U64), ("amount", I64), ("balance", I64)],
    [("softLimit", LEVEL), ("subject", STR), ("window", WINDOW), ("limit", I64), ("used", I64)],
]


def read_event(r):
    head = read_fields(EVENT_HEAD, r)
    kind = r.int("B")
    if kind >= len(EVENT_KINDS):
        raise Malformed("event kind %d" % kind)
    return (head, kind, read_fields(EVENT_KINDS[kind], r))


def write_event(w, v):
    head, kind, fields = v
    write_fields(EVENT_HEAD, w, head)
    w.int("B", kind)
    write_fields(EVENT_KINDS[kind], w, fields)


def render_event(v):
    head, kind, fields = v
    return render_fields(EVENT_HEAD, head) + render_fields(EVENT_KINDS[kind], fields)


def status_name(status):
    if status == 0:
        return "ok"
    if status < len(LEDGER_STATUS) and LEDGER_STATUS[status]:
        return LEDGER_STATUS[status]
    if status in PROTOCOL_STATUS:
        return PROTOCOL_STATUS[status]
    raise Malformed("unknown status %d" % status)


class Body:
    """A decoded body: enough to render its meaning and to encode it again."""

    def __init__(self, read, write, render):
        self.read, self.write, self.render = read, write, render


def request_body(name):
    if name == "BATCH":
        def read(r):
            items = []
            for _ in range(r.int("H")):
                item_name = OPCODES[r.int("B")]
                sub = Reader(r.take(r.int("I")))
                fields = read_fields(REQUESTS[item_name], sub)
                sub.done()
                items.append((item_name, fields))
            return items
        def write(w, items):
            w.int("H", len(items))
            for item_name, fields in items:
                sub = Writer(); write_fields(REQUESTS[item_name], sub, fields); data = sub.bytes()
                w.int("B", OPCODE_BY_NAME[item_name]); w.int("I", len(data)); w.parts.append(data)
        def render(items):
            return ["count=%d" % len(items)] + [
                "[" + " ".join([n] + render_fields(REQUESTS[n], f)) + "]" for n, f in items]
        return Body(read, write, render)
    schema = REQUESTS[name]
    return Body(lambda r: read_fields(schema, r), lambda w, f: write_fields(schema, w, f), lambda f: render_fields(schema, f))


def response_body(name, status):
    if status >= 100:
        schema = ERROR
    elif status != 0:
        schema = REFUSAL
    elif name in ("BALANCE", "BALANCE_AT"):
        return Body(read_balance, write_balance, render_balance)
    elif name == "EVENT":
        return Body(read_event, write_event, render_event)
    elif name == "BATCH":
        def read(r):
            items = []
            for _ in range(r.int("H")):
                item_name, item_status = OPCODES[r.int("B")], r.int("H")
                sub = Reader(r.take(r.int("I")))
                body = response_body(item_name, item_status)
                value = body.read(sub)
                sub.done()
                items.append((item_name, item_status, value))
            return items
        def write(w, items):
            w.int("H", len(items))
            for item_name, item_status, value in items:
                sub = Writer(); response_body(item_name, item_status).write(sub, value); data = sub.bytes()
                w.int("B", OPCODE_BY_NAME[item_name]); w.int("H", item_status); w.int("I", len(data)); w.parts.append(data)
        def render(items):
            return ["count=%d" % len(items)] + [
                "[" + " ".join([n, status_name(s)] + response_body(n, s).render(v)) + "]" for n, s, v in items]
        return Body(read, write, render)
    else:
        schema = SUCCESS.get(name, [])
    return Body(lambda r: read_fields(schema, r), lambda w, f: write_fields(schema, w, f), lambda f: render_fields(schema, f))


def decode(data, direction):
    """One whole frame: returns (header tuple, opcode name, body description, decoded value)."""
    if len(data) < HEADER.size:
        raise Malformed("short header")
    magic, version, opcode, flags, status, request_id, length = HEADER.unpack_from(data)
    if magic != MAGIC or version != 1 or flags & ~RESPONSE_FLAG or bool(flags & RESPONSE_FLAG) != (direction == "response"):
        raise Malformed("bad header")
    if len(data) != HEADER.size + length or opcode not in OPCODES:
        raise Malformed("bad length or opcode")
    name = OPCODES[opcode]
    body = request_body(name) if direction == "request" else response_body(name, status)
    reader = Reader(data[HEADER.size:])
    value = body.read(reader)
    reader.done()
    return (opcode, flags, status, request_id), name, body, value


def encode(header, body, value):
    opcode, flags, status, request_id = header
    writer = Writer()
    body.write(writer, value)
    data = writer.bytes()
    return HEADER.pack(MAGIC, 1, opcode, flags, status, request_id, len(data)) + data


def meaning(direction, header, name, body, value):
    parts = [direction, "id=%d" % header[3], name]
    if direction == "response":
        parts.append(status_name(header[2]))
    return " ".join(parts + body.render(value))
