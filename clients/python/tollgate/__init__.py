"""Tollgate: a real-time credit gate. A pure-Python client for its wire protocol
(proto/PROTOCOL.md), blocking (`Client`) and asyncio (`AsyncClient`).

    import tollgate
    gate = tollgate.Client("127.0.0.1:7400", account="acme", member="alice")

    @gate.gated(product="web_search")
    def search(query): ...
"""

from . import ops, types
from .aio import AsyncClient, AsyncEventStream
from .client import Client, EventStream
from .errors import *  # noqa: F401,F403 — the typed exceptions, one per status
from .errors import ConnectionLost, CreditsExhausted, DeadlineExceeded, ProtocolError, Refused, TollgateError
from .failsafe import OfflineRefused
from .gate import AsyncHold, Hold, current_hold
from .ops import Result, new_key
from .types import Balance, Burn, Cap, Funds, Grant, Headroom, Level, Subscription, SubscriptionTerms

__version__ = "0.1.0"

__all__ = ["Client", "AsyncClient", "EventStream", "AsyncEventStream", "Hold", "AsyncHold", "current_hold", "Result", "new_key", "ops", "types",
           "Balance", "Burn", "Cap", "Funds", "Grant", "Headroom", "Level", "Subscription", "SubscriptionTerms",
           "OfflineRefused", "TollgateError", "Refused", "CreditsExhausted", "ProtocolError", "DeadlineExceeded", "ConnectionLost"]
