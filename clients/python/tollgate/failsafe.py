"""What a client does when the gate cannot be reached: the `fail` policy.

- `fail="closed"` (the default): a call that cannot reach the gate (after its retries, within
  its deadline) raises — `ConnectionLost`, `DeadlineExceeded` or `Unavailable` — and the agent's
  action does not run.
- `fail="open"`, with `offline_allowance`: CHECK, RESERVE and SPEND are decided locally while
  the gate is unreachable, against a bounded allowance per account, and every local decision is
  settled with the gate, under its own idempotency key, once the gate answers again.

The bound: at any moment, the credits an account has been allowed offline and not yet settled
(spent, plus what local holds hold) never exceed its allowance — `offline_allowance` credits
(an int for every account, or a dict by account; an account missing from the dict gets none).
A request is priced at the rate the client last saw the gate answer for that account and
product (`credits_per_unit` of a CHECK, RESERVE or SPEND), or `offline_rates[product]`; a
product with no known rate is not allowed offline. Local decisions carry `offline=True`.

Settlement sends each offline spend as a SPEND with its key — the key the call had, so a spend
the gate did receive before the connection dropped is answered from that key, not charged
again. It runs after the next call that reaches the gate (or on `client.settle()`), in the
order the spends were made. A spend the gate refuses when settled (the credits were gone by
then) is the overspend the policy allowed: it is listed in `client.overspent` with its
refusal, and is never more than the allowance. A local hold is settled when it is committed
(as a SPEND of the quantity used) and forgotten when it is released; commit, release and
extend of a hold the gate made cannot be decided offline and raise as under `closed`.
"""

import itertools
import threading

from . import errors, ops

OFFLINE_HOLD_PREFIX = "offline-"
# What counts as "the gate cannot be reached": the connection, the deadline, or the server
# saying it cannot decide now (nothing was applied).
UNREACHABLE = (errors.ConnectionLost, errors.DeadlineExceeded, errors.BY_STATUS[108])


class OfflineRefused(errors.TollgateError):
    """The gate is unreachable and the fail-open policy does not cover this request: no
    allowance left for the account, no known rate for the product, or an operation on a hold
    the gate made. `reason` says which; `cause` is the failure that made it offline."""

    def __init__(self, reason, cause=None, operation=None):
        super().__init__(reason)
        self.reason, self.cause, self.operation = reason, cause, operation


class FailSafe:
    """The fail-open state of one client: allowance used, local holds, spends to settle."""

    def __init__(self, allowance, rates=None):
        if isinstance(allowance, bool) or not isinstance(allowance, (int, dict)):
            raise TypeError("offline_allowance is credits (an int) or a dict of credits by account")
        self.allowance = allowance
        self.rates = dict(rates or {})
        self.seen_rates = {}
        self.used = {}          # account → credits allowed offline and not yet settled
        self.holds = {}         # local hold id → dict(account, member, product, quantity, rate, cost, key)
        self.pending = []       # (account, cost, SPEND request) in the order they were made
        self.overspent = []     # (SPEND request, refusal) refused when settled
        self.settled = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def limit(self, account):
        if isinstance(self.allowance, dict):
            return self.allowance.get(account, 0)
        return self.allowance

    def learn(self, request, result):
        """Remembers the rate an online answer carried, for pricing offline."""
        if request.name in ("CHECK", "RESERVE", "SPEND") and hasattr(result, "get") and result.get("credits_per_unit") is not None:
            fields = dict(request.fields)
            self.seen_rates[(fields["account"], fields["product"])] = result["credits_per_unit"]

    def _rate(self, account, product):
        rate = self.seen_rates.get((account, product), self.rates.get(product))
        return rate

    def decide(self, request, cause):
        """The local answer to a gate request that could not reach the gate, or raises."""
        fields = dict(request.fields)
        if request.name in ("RESERVE_METERED", "SPEND_METERED"):
            raise OfflineRefused("a metered call (%s) is not decided locally while the gate is unreachable" % fields.get("product"), cause, request.name)
        if request.name not in ("CHECK", "RESERVE", "SPEND"):
            raise OfflineRefused("%s of a hold the gate made cannot be decided while it is unreachable" % request.name, cause, request.name)
        account, product, quantity = fields["account"], fields["product"], fields["quantity"]
        rate = self._rate(account, product)
        if rate is None:
            raise OfflineRefused("no known rate for %s (set offline_rates, or make one online call first)" % product, cause, request.name)
        cost = rate * quantity
        with self._lock:
            used = self.used.get(account, 0)
            if used + cost > self.limit(account):
                raise OfflineRefused(
                    "the gate is unreachable and %s's offline allowance (%d credits, %d used) does not cover %d" % (
                        account, self.limit(account), used, cost), cause, request.name)
            decision = ops.Result(hold=None, cost=cost, credits_per_unit=rate, deadline=None, headroom=None, offline=True)
            if request.name == "CHECK":
                return decision
            self.used[account] = used + cost
            if request.name == "SPEND":
                self.pending.append((account, cost, request))
            else:
                hold = OFFLINE_HOLD_PREFIX + str(next(self._ids))
                self.holds[hold] = dict(account=account, member=fields["member"], product=product, quantity=quantity, rate=rate,
                                        cost=cost, key=request.key)
                decision["hold"] = hold
            return decision

    @staticmethod
    def is_local(hold):
        return isinstance(hold, str) and hold.startswith(OFFLINE_HOLD_PREFIX)

    def commit(self, hold, quantity=None, credits=None, final=True):
        """Commits a local hold: the quantity used (or the hold's) becomes a spend to settle."""
        with self._lock:
            local = self.holds.get(hold)
            if local is None:
                raise errors.BY_STATUS[10]("request", str(hold), None, operation="COMMIT")  # unknownHold
            if quantity is None:
                quantity = local["quantity"] if credits is None else -(-credits // max(1, local["rate"]))
            cost = local["rate"] * quantity
            account = local["account"]
            others = self.used.get(account, 0) - local["cost"]
            if others + cost > self.limit(account):
                raise OfflineRefused("committing %d credits offline would exceed %s's offline allowance" % (cost, account), None, "COMMIT")
            self.used[account] = others + cost
            if cost > 0:
                request = ops.spend(account, local["product"], quantity, local["member"], key="%s-commit" % (local["key"] or hold))
                self.pending.append((account, cost, request))
            del self.holds[hold]
            return ops.Result(hold=hold, committed=cost, returned=max(0, local["cost"] - cost), still_held=0, headroom=None, offline=True)

    def release(self, hold):
        with self._lock:
            local = self.holds.pop(hold, None)
            if local is None:
                raise errors.BY_STATUS[10]("request", str(hold), None, operation="RELEASE")
            self.used[local["account"]] = self.used.get(local["account"], 0) - local["cost"]
            return ops.Result(hold=hold, released=local["cost"], headroom=None, offline=True)

    def next_to_settle(self):
        with self._lock:
            return self.pending[0] if self.pending else None

    def done(self, entry, refusal=None):
        """One pending spend was answered by the gate: charged, or refused (`refusal`)."""
        with self._lock:
            if self.pending and self.pending[0] is entry:
                self.pending.pop(0)
                account, cost, request = entry
                self.used[account] = self.used.get(account, 0) - cost
                self.settled += 1
                if refusal is not None:
                    self.overspent.append((request, refusal))
