"""Every operation of proto/PROTOCOL.md §5 as Python arguments → request fields, and
response fields → results. Shared by the blocking and the asyncio client; no I/O here.

Times are seconds (`ttl=30`, `ttl=0.5`) or instants (a `datetime`, or microseconds since the
epoch as an `int`); credits and quantities are integers — there is no fractional credit.
"""

import datetime
import re
import uuid

from . import errors, types, wire

NEVER = (1 << 63) - 1

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name):
    return _SNAKE.sub("_", name).lower()


class Result(dict):
    """An answer: a dict whose keys are also attributes (`decision.cost`, `decision["cost"]`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self):
        return "Result(%s)" % ", ".join("%s=%r" % item for item in self.items())


def new_key():
    """A fresh idempotency key: 32 hex digits of randomness."""
    return uuid.uuid4().hex


def _integer(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s must be an int (whole credits or units), not %r" % (name, value))
    return value


def microseconds(seconds, name="ttl"):
    """A duration in seconds (int or float) as whole microseconds."""
    if isinstance(seconds, datetime.timedelta):
        seconds = seconds.total_seconds()
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError("%s must be a number of seconds, at least 0, not %r" % (name, seconds))
    return int(round(seconds * 1_000_000))


def instant(value, name="instant"):
    """A datetime (naive means UTC), or microseconds since the epoch, as an i64 instant."""
    if value is None:
        return 0
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        delta = value - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return _integer(name, value)


def to_datetime(micros):
    """An instant as an aware UTC datetime (None for "never")."""
    if micros is None or micros >= NEVER:
        return None
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(microseconds=micros)


def _overage(policy):
    if policy in (None, "deny"):
        return (0, 0)
    kind, value = policy
    kinds = {"overdraft": 1, "finish": 2}
    if kind not in kinds:
        raise ValueError("overage is 'deny', ('overdraft', credits) or ('finish', percent), not %r" % (policy,))
    return (kinds[kind], _integer("overage value", value))


def _period(period):
    if period is None:
        return None
    if period[0] == "monthly":
        return (0, instant(period[1]), 0)
    if period[0] == "fixed":
        return (1, instant(period[1]), microseconds(period[2], "period length"))
    raise ValueError("period is ('monthly', anchor) or ('fixed', anchor, seconds), not %r" % (period,))


def _terms(terms):
    if terms is None:
        return None
    scope = {"pooled": 0, "per_member": 1}[terms.get("scope", "pooled")]
    removal = {"keep": 0, "claw_back": 1}[terms.get("removal", "keep")]
    return (scope, _integer("credits_per_seat", terms["credits_per_seat"]), bool(terms.get("prorate", False)), removal,
            _integer("rollover_cap", terms.get("rollover_cap", 0)), _integer("priority", terms.get("priority", 0)))


def _threshold(threshold):
    if threshold == "depleted":
        return (2, 0)
    kind, value = threshold
    kinds = {"credits": 0, "percent": 1}
    if kind not in kinds:
        raise ValueError("threshold is ('credits', n), ('percent', p) or 'depleted', not %r" % (threshold,))
    return (kinds[kind], _integer("threshold", value))


def _recharge(below, amount, up_to, max_per_period, priority, expires_after):
    if below is None:
        return None
    return (_integer("below", below), _integer("amount", amount), None if up_to is None else _integer("up_to", up_to),
            _integer("max_per_period", max_per_period), _integer("priority", priority),
            None if expires_after is None else microseconds(expires_after, "expires_after"))


SOURCES = {"recurring": 0, "top-up": 1, "promotional": 2, "manual": 3, "rollover": 4}
# One spelling, "top-up", as the CLI, plan files and the read API's JSON have it; the Python
# spelling the client took before is still accepted.
_SOURCE_ALIASES = {"top_up": "top-up", "topUp": "top-up"}


def _source(name):
    name = _SOURCE_ALIASES.get(name, name)
    if name not in SOURCES:
        raise ValueError("source must be one of %s, not %r" % (", ".join(sorted(SOURCES)), name))
    return SOURCES[name]


def _decision(account, product, quantity, member):
    return [("account", account), ("member", member), ("product", product), ("quantity", _integer("quantity", quantity))]


class Request:
    """One request, ready to send: its opcode name, its fields, and whether it mutates (so it
    carries an idempotency key and may be retried with it)."""

    __slots__ = ("name", "fields", "mutating", "key")

    def __init__(self, name, fields, key=None):
        self.name, self.fields, self.key = name, fields, key
        self.mutating = key is not None

    def body(self):
        writer = wire.Writer()
        wire.request_body(self.name).write(writer, self.fields)
        return writer.bytes()


def _mutation(name, key, fields):
    key = key or new_key()
    return Request(name, [("key", key)] + fields, key=key)


# ---- Builders: Python arguments → Request -------------------------------------------------

def ping():
    return Request("PING", [])


def check(account, product, quantity=1, member=None):
    return Request("CHECK", _decision(account, product, quantity, member))


def reserve(account, product, quantity=1, member=None, ttl=60, key=None):
    return _mutation("RESERVE", key, _decision(account, product, quantity, member) + [("ttlMicroseconds", microseconds(ttl))])


def commit(account, hold, quantity=None, credits=None, final=True, key=None):
    if quantity is not None and credits is not None:
        raise ValueError("commit either a quantity or credits, not both")
    amount = (0, 0) if quantity is None and credits is None else (1, _integer("quantity", quantity)) if quantity is not None else (
        2, _integer("credits", credits))
    return _mutation("COMMIT", key, [("account", account), ("hold", hold), ("amount", amount), ("final", bool(final))])


def _dimensions(dimensions, allow_empty=False):
    """A mapping (or pairs) of dimension names to quantities, as the wire's list."""
    pairs = list(dimensions.items()) if hasattr(dimensions, "items") else list(dimensions)
    if (not pairs and not allow_empty) or len(pairs) > 16:
        raise ValueError("a metered request names 1 to 16 dimensions, e.g. {'input': 1200, 'output': 300}")
    return [(str(name), _integer("quantity of %s" % name, quantity)) for name, quantity in pairs]


def reserve_metered(account, product, dimensions, member=None, ttl=60, key=None):
    """Holds the cost of `dimensions` (e.g. {"input": 8000, "output": 4000}: an estimate or the worst case)
    at the product's dimension rates now."""
    return _mutation("RESERVE_METERED", key, [("account", account), ("member", member), ("product", product),
                                              ("dimensions", _dimensions(dimensions)), ("ttlMicroseconds", microseconds(ttl))])


def spend_metered(account, product, dimensions, member=None, key=None):
    return _mutation("SPEND_METERED", key, [("account", account), ("member", member), ("product", product),
                                            ("dimensions", _dimensions(dimensions))])


def commit_metered(account, hold, dimensions, final=True, key=None):
    """Commits a metered hold's actual quantities, priced at the rates of its reserve."""
    return _mutation("COMMIT_METERED", key, [("account", account), ("hold", hold), ("dimensions", _dimensions(dimensions, allow_empty=True)),
                                             ("final", bool(final))])


def set_metered_rate(product, dimension, credits, per=1, effective_at=None, key=None):
    """`credits` per `per` units (1, 1000 or 1000000) of a product's dimension, from `effective_at` (now)."""
    if per not in (1, 1_000, 1_000_000):
        raise ValueError("set_metered_rate: per must be 1, 1000 or 1000000, not %r" % (per,))
    return _mutation("SET_METERED_RATE", key, [("product", product), ("dimension", dimension), ("credits", _integer("credits", credits)),
                                               ("per", per), ("effectiveAt", instant(effective_at))])


def release(account, hold, key=None):
    return _mutation("RELEASE", key, [("account", account), ("hold", hold)])


def extend(account, hold, ttl, key=None):
    return _mutation("EXTEND", key, [("account", account), ("hold", hold), ("ttlMicroseconds", microseconds(ttl))])


def spend(account, product, quantity=1, member=None, key=None):
    return _mutation("SPEND", key, _decision(account, product, quantity, member))


def balance(account, member=None):
    return Request("BALANCE", [("account", account), ("member", member)])


def balance_at(account, at, member=None):
    return Request("BALANCE_AT", [("account", account), ("member", member), ("at", instant(at, "at"))])


def create_account(account, parent=None, overage="deny", period=None, key=None):
    return _mutation("CREATE_ACCOUNT", key, [("account", account), ("parent", parent), ("overage", _overage(overage)), ("period", _period(period))])


def set_parent(account, parent, key=None):
    return _mutation("SET_PARENT", key, [("account", account), ("parent", parent)])


def set_overage(account, overage, key=None):
    return _mutation("SET_OVERAGE", key, [("account", account), ("overage", _overage(overage))])


def set_period(account, period, key=None):
    return _mutation("SET_PERIOD", key, [("account", account), ("period", _period(period))])


def set_account_cap(account, limit, key=None):
    return _mutation("SET_ACCOUNT_CAP", key, [("account", account), ("limit", limit)])


def add_member(account, member, key=None):
    return _mutation("ADD_MEMBER", key, [("account", account), ("member", member)])


def remove_member(account, member, key=None):
    return _mutation("REMOVE_MEMBER", key, [("account", account), ("member", member)])


def set_member_cap(account, member, limit, key=None):
    return _mutation("SET_MEMBER_CAP", key, [("account", account), ("member", member), ("limit", limit)])


def set_cap(account, limit, member=None, group=None, per="period", soft=False, key=None):
    """A cap over `per` ("period", "minute", "hour" or "day", UTC) of the account, or of `member`
    or `group`; `soft` caps never refuse and fire a softLimit event. `limit` None removes it."""
    if member is not None and group is not None:
        raise ValueError("set_cap: a member or a group, not both")
    if per not in wire.WINDOWS:
        raise ValueError("set_cap: per must be one of %s, not %r" % (", ".join(wire.WINDOWS), per))
    target = ("member", member) if member is not None else (("group", group) if group is not None else "account")
    return _mutation("SET_CAP", key, [("account", account), ("target", target), ("window", per), ("mode", "soft" if soft else "hard"),
                                      ("limit", limit)])


def set_concurrency(account, limit, member=None, each_member=False, key=None):
    """The most holds the account (or `member`, or with `each_member` each member) may have open at once; None removes it."""
    if member is not None and each_member:
        raise ValueError("set_concurrency: a member or each_member, not both")
    target = ("member", member) if member is not None else ("eachMember" if each_member else "account")
    return _mutation("SET_CONCURRENCY", key, [("account", account), ("target", target), ("limit", limit)])


def create_group(account, group, key=None):
    return _mutation("CREATE_GROUP", key, [("account", account), ("group", group)])


def delete_group(account, group, key=None):
    return _mutation("DELETE_GROUP", key, [("account", account), ("group", group)])


def set_group_cap(account, group, limit, key=None):
    return _mutation("SET_GROUP_CAP", key, [("account", account), ("group", group), ("limit", limit)])


def add_to_group(account, group, member, key=None):
    return _mutation("ADD_TO_GROUP", key, [("account", account), ("group", group), ("member", member)])


def remove_from_group(account, group, member, key=None):
    return _mutation("REMOVE_FROM_GROUP", key, [("account", account), ("group", group), ("member", member)])


def add_grant(account, amount, member=None, priority=0, effective_at=None, expires_at=None, source="manual", products=(), key=None):
    """A grant of `amount` credits; `products` limits what it may pay for (default: any product)."""
    if isinstance(products, str):
        raise ValueError("add_grant: products is a list of product ids, not one string")
    return _mutation("ADD_GRANT", key, [
        ("account", account), ("scope", member), ("amount", _integer("amount", amount)), ("priority", priority),
        ("effectiveAt", instant(effective_at)), ("expiresAt", NEVER if expires_at is None else instant(expires_at)),
        ("source", _source(source)), ("products", list(products))])


def void_grant(account, grant, key=None):
    return _mutation("VOID_GRANT", key, [("account", account), ("grant", grant)])


def set_rate(product, credits_per_unit, effective_at=None, key=None):
    return _mutation("SET_RATE", key, [("product", product), ("creditsPerUnit", _integer("credits_per_unit", credits_per_unit)),
                                       ("effectiveAt", instant(effective_at))])


def set_account_rate(account, product, credits_per_unit, effective_at=None, key=None):
    return _mutation("SET_ACCOUNT_RATE", key, [("account", account), ("product", product), ("creditsPerUnit", credits_per_unit),
                                               ("effectiveAt", instant(effective_at))])


def set_subscription(account, terms, key=None):
    """`terms`: a dict with `credits_per_seat` and optionally `scope` ("pooled" or
    "per_member"), `prorate`, `removal` ("keep" or "claw_back"), `rollover_cap`, `priority`;
    None ends the subscription at the period's end."""
    return _mutation("SET_SUBSCRIPTION", key, [("account", account), ("terms", _terms(terms))])


def set_seats(account, seats, effective_at=None, key=None):
    return _mutation("SET_SEATS", key, [("account", account), ("seats", _integer("seats", seats)), ("effectiveAt", instant(effective_at))])


def set_alert(account, id, threshold, member=None, key=None):
    return _mutation("SET_ALERT", key, [("account", account), ("id", id), ("member", member), ("threshold", _threshold(threshold))])


def remove_alert(account, id, key=None):
    return _mutation("REMOVE_ALERT", key, [("account", account), ("id", id)])


def set_auto_recharge(account, below=None, amount=None, up_to=None, max_per_period=1, priority=0, expires_after=None, key=None):
    """`below=None` turns auto-recharge off."""
    return _mutation("SET_AUTO_RECHARGE", key, [("account", account), ("recharge", _recharge(below, amount, up_to, max_per_period, priority, expires_after))])


def define_plan(name, overage="deny", subscription=None, grants=(), alerts=(), recharge=None, key=None):
    """`grants`: dicts with `amount` and optionally `priority`, `source`, `lifetime` (seconds);
    `alerts`: (id, threshold) pairs; `recharge`: the keyword arguments of set_auto_recharge."""
    plan_grants = [(_integer("amount", g["amount"]), g.get("priority", 0), _source(g.get("source", "manual")),
                    None if g.get("lifetime") is None else microseconds(g["lifetime"], "lifetime")) for g in grants]
    plan_alerts = [(alert_id, _threshold(threshold)) for alert_id, threshold in alerts]
    recharge_value = None if recharge is None else _recharge(
        recharge["below"], recharge["amount"], recharge.get("up_to"), recharge.get("max_per_period", 1), recharge.get("priority", 0),
        recharge.get("expires_after"))
    return _mutation("DEFINE_PLAN", key, [("name", name), ("overage", _overage(overage)), ("subscription", _terms(subscription)),
                                          ("grants", plan_grants), ("alerts", plan_alerts), ("recharge", recharge_value)])


def provision(account, plan, members=(), seats=0, parent=None, key=None):
    return _mutation("PROVISION", key, [("account", account), ("plan", plan), ("parent", parent), ("seats", _integer("seats", seats)),
                                        ("members", list(members))])


def subscribe(after=None, account=None):
    return Request("SUBSCRIBE", [("after", after), ("account", account)])


BATCHABLE = {"CHECK", "RESERVE", "COMMIT", "RELEASE", "EXTEND", "SPEND", "RESERVE_METERED", "SPEND_METERED", "COMMIT_METERED"}


def batch(requests):
    """Gate requests (check, reserve, commit, release, extend, spend) in one frame."""
    requests = list(requests)
    for request in requests:
        if request.name not in BATCHABLE:
            raise ValueError("a batch holds only check, reserve, commit, release, extend and spend, not %s" % request.name)
    request = Request("BATCH", [(r.name, r.fields) for r in requests])
    request.mutating = any(r.mutating for r in requests)
    return request


# ---- Results: response fields → Result, or the typed exception ----------------------------

def _headroom(h):
    if h is None:
        return None
    group = h.get("group")
    return types.Headroom(
        funds=h["funds"], member=h.get("member"), group=group[0] if group else None, tightest_group=group[1] if group else None,
        account=h.get("account"), parent=h.get("parent"))


_SOURCE_NAMES = {value: name for name, value in SOURCES.items()}
_STATES = ["pending", "active", "expired", "voided"]
_OVERAGES = ["deny", "overdraft", "finish"]


def _overage_name(value):
    kind, amount = value
    return _OVERAGES[kind] if kind == 0 else "%s:%d" % (_OVERAGES[kind], amount)


def _terms_view(t):
    scope, per_seat, prorate, removal, rollover_cap, priority = t
    return types.SubscriptionTerms(
        scope="pooled" if scope == 0 else "per-member", credits_per_seat=per_seat, prorate=bool(prorate),
        removal="keep" if removal == 0 else "claw-back", rollover_cap=rollover_cap, priority=priority)


def _balance(b):
    moment = types.moment
    member, pool, parent_pool, overage, overdrawn, overdraft_held = b["funds"]
    grants = []
    scoped = dict(b["grantProducts"])
    for index, g in enumerate(b["grants"]):
        (grant_id, account, scope, amount, available, held, consumed, expired, voided, priority, effective_at, expires_at,
         source, state) = g
        grants.append(types.Grant(
            id=grant_id, account=account, member=scope, amount=amount, available=available, held=held, consumed=consumed,
            expired=expired, voided=voided, priority=priority, effective_at=moment(effective_at), expires_at=moment(expires_at),
            source=_SOURCE_NAMES.get(source, str(source)), state=_STATES[state] if state < len(_STATES) else str(state),
            products=scoped.get(index, [])))
    subscription = None
    sub = b["subscription"]
    if sub is not None:
        kind, following = sub["next"]
        pending = sub["pendingSeats"]
        subscription = types.Subscription(
            terms=_terms_view(sub["terms"]), seats=sub["seats"], period_start=moment(sub["periodStart"]),
            period_end=moment(sub["periodEnd"]), next="unchanged" if kind == 0 else ("ends" if kind == 1 else _terms_view(following)),
            pending_seats=None if pending is None else (moment(pending[0]), pending[1]))
    return types.Balance(
        account=b["account"], member=b["member"], at=moment(b["at"]), period_start=moment(b["periodStart"]),
        period_end=moment(b["periodEnd"]), headroom=_headroom(b["headroom"]),
        levels=[types.Level(*level, caps=[types.Cap(window=c[1], mode=c[2], limit=c[3], used=c[4], window_end=moment(c[5]))
                                          for c in b["caps"] if c[0] == index])
                for index, level in enumerate(b["levels"])],
        funds=types.Funds(member=member, pool=pool, parent_pool=parent_pool, overage=_overage_name(overage), overdrawn=overdrawn,
                          overdraft_held=overdraft_held),
        grants=grants, open_holds=b["openHolds"], subscription=subscription, burn=types.Burn(*b["burn"]),
        open_holds_limit=b["openHoldsLimit"])


def result(name, status, value, operation=None):
    """The Result of a response, or raises its typed exception."""
    if status >= 100:
        message = dict(value)["message"]
        raise errors.BY_STATUS.get(status, errors.ProtocolError)(message, operation=operation or name)
    if status != 0:
        fields = dict(value)
        cls = errors.BY_STATUS.get(status, errors.Refused)
        raise cls(fields["level"], fields["subject"], _headroom(fields["headroom"]), operation=operation or name)
    return success(name, value)


def success(name, value):
    if name in ("BALANCE", "BALANCE_AT"):
        return _balance(value)
    if name == "BATCH":
        out = []
        for item_name, item_status, item_value in value:
            try:
                out.append(result(item_name, item_status, item_value))
            except errors.TollgateError as error:
                out.append(error)
        return out
    if name == "EVENT":
        head, kind, fields = value
        event = Result((snake(k), v) for k, v in head)
        event["kind"] = ["alert", "depleted", "recharged", "softLimit"][kind]
        event.update((snake(k), v) for k, v in fields)
        return event
    out = Result((snake(k), v) for k, v in value)
    if "headroom" in out:
        out["headroom"] = _headroom(out["headroom"])
    return out
