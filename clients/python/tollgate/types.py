"""Typed results: a BALANCE (and BALANCE_AT) decoded into dataclasses, with instants as
timezone-aware `datetime`s (UTC) and names where the wire has numbers, as the CLI's JSON has
them. Fields also read as items (`balance["funds"]`), as the client's other results do."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
NEVER = (1 << 63) - 1


def moment(microseconds: int) -> Optional[datetime.datetime]:
    """An instant (µs since the epoch) as a UTC datetime; None for "never" (and any instant
    past what `datetime` can hold, year 9999)."""
    if microseconds >= NEVER:
        return None
    try:
        return EPOCH + datetime.timedelta(microseconds=microseconds)
    except OverflowError:
        return None


class _Items:
    """Fields readable as items too: `x["name"]` is `x.name`."""

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None


@dataclass(frozen=True)
class Headroom(_Items):
    """How many more credits each level allows (None: that level has no cap)."""
    funds: int
    member: Optional[int] = None
    group: Optional[int] = None
    #: The group whose cap is tightest, when `group` is set.
    tightest_group: Optional[str] = None
    account: Optional[int] = None
    parent: Optional[int] = None


@dataclass(frozen=True)
class Level(_Items):
    """One level of the chain (member, group, account, parent) this period."""
    level: str
    subject: str
    limit: Optional[int]
    consumed: int
    held: int
    headroom: Optional[int]
    #: Every cap of the level: the period's hard cap (`limit`) first if set, then caps over
    #: other windows and soft caps.
    caps: List["Cap"] = field(default_factory=list)


@dataclass(frozen=True)
class Cap(_Items):
    """A cap over a window: "period", "minute", "hour" or "day" (UTC); "hard" refuses, "soft" only notifies."""
    window: str
    mode: str
    limit: int
    #: Consumed plus held in the current window.
    used: int
    window_end: Optional[datetime.datetime]


@dataclass(frozen=True)
class Funds(_Items):
    member: int
    pool: int
    parent_pool: int
    #: "deny", "overdraft:LIMIT" or "finish:PERCENT".
    overage: str
    overdrawn: int
    overdraft_held: int

    @property
    def balance(self) -> int:
        """What can be drawn, less what is owed: member + pool + parent pool − overdrawn."""
        return self.member + self.pool + self.parent_pool - self.overdrawn


@dataclass(frozen=True)
class Grant(_Items):
    id: int
    account: str
    #: The member the grant is scoped to; None for the pool.
    member: Optional[str]
    amount: int
    available: int
    held: int
    consumed: int
    expired: int
    voided: int
    priority: int
    effective_at: Optional[datetime.datetime]
    #: None: never expires.
    expires_at: Optional[datetime.datetime]
    #: "recurring", "top-up", "promotional", "manual" or "rollover".
    source: str
    #: "pending", "active", "expired" or "voided".
    state: str
    #: The products it may pay for; empty: any product.
    products: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class SubscriptionTerms(_Items):
    #: "pooled" or "per-member".
    scope: str
    credits_per_seat: int
    prorate: bool
    #: "keep" or "claw-back".
    removal: str
    rollover_cap: int
    priority: int


@dataclass(frozen=True)
class Subscription(_Items):
    terms: SubscriptionTerms
    seats: int
    period_start: Optional[datetime.datetime]
    period_end: Optional[datetime.datetime]
    #: "unchanged", "ends", or the terms that take over at `period_end`.
    next: Any
    #: A seat change waiting for its instant: (when, seats), or None.
    pending_seats: Optional[Tuple[Optional[datetime.datetime], int]]


@dataclass(frozen=True)
class Burn(_Items):
    """Credits consumed over the last minute and hour (before `at`, for BALANCE_AT)."""
    last_minute: int
    last_hour: int


@dataclass(frozen=True)
class Balance(_Items):
    account: str
    member: Optional[str]
    at: Optional[datetime.datetime]
    period_start: Optional[datetime.datetime]
    period_end: Optional[datetime.datetime]
    headroom: Headroom
    levels: List[Level]
    funds: Funds
    #: The grants that can be drawn now, in draw order (proto/PROTOCOL.md §5.4).
    grants: List[Grant]
    open_holds: int
    subscription: Optional[Subscription]
    burn: Burn = field(default_factory=lambda: Burn(0, 0))
    #: The most holds that may be open at once (the member's bound for a member's balance); None: unbounded.
    open_holds_limit: Optional[int] = None

    @property
    def burn_last_minute(self) -> int:
        return self.burn.last_minute

    @property
    def burn_last_hour(self) -> int:
        return self.burn.last_hour
