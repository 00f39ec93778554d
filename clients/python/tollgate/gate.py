"""The layer agent code uses: a hold as a context manager, and a decorator for tool functions."""

import asyncio
import contextvars
import functools
import inspect
import threading

from . import errors

_current = contextvars.ContextVar("tollgate_hold", default=None)


def current_hold():
    """The hold of the gated call (or `with client.hold(...)` block) running now, or None —
    so a tool can record what it actually used: `tollgate.current_hold().use(quantity=3)`."""
    return _current.get()


ON_EXPIRY = ("raise", "spend")


class _HoldBase:
    def __init__(self, client, account, member, product, quantity, ttl, keepalive, key, timeout, on_expiry="raise"):
        if on_expiry not in ON_EXPIRY:
            raise ValueError("on_expiry must be one of %s, not %r" % (", ".join(ON_EXPIRY), on_expiry))
        self.client, self.account, self.member = client, account, member
        self.product, self.quantity, self.ttl = product, quantity, ttl
        self.keepalive, self.key, self.timeout = keepalive, key, timeout
        self.on_expiry = on_expiry
        #: True when the hold had expired at the end and what was used was spent instead.
        self.spent_after_expiry = False
        self.decision = None
        self.result = None
        self._usage = {}
        self._token = None

    @property
    def id(self):
        return None if self.decision is None else self.decision.hold

    def use(self, quantity=None, credits=None):
        """What the step actually used, committed on a clean exit (default: the whole hold)."""
        if quantity is not None and credits is not None:
            raise ValueError("use either a quantity or credits, not both")
        self._usage = {"quantity": quantity} if quantity is not None else {"credits": credits} if credits is not None else {}

    def _reserve_arguments(self):
        return dict(account=self.account, member=self.member, ttl=self.ttl, key=self.key, timeout=self.timeout)

    def _spend_instead(self):
        """The SPEND that stands in for the commit of an expired hold (`on_expiry="spend"`): the
        quantity used (or the hold's), under a key made from the hold's, so a retry is charged once."""
        if "credits" in self._usage:
            return None  # SPEND prices a quantity; credits used cannot be charged without a hold
        quantity = self._usage.get("quantity", self.quantity)
        key = "%s-expired-%s" % (self.key or "hold", self.id)
        return dict(product=self.product, quantity=quantity, account=self.account, member=self.member, key=key, timeout=self.timeout)


class Hold(_HoldBase):
    """`with client.hold("web_search") as hold:` — reserve on enter, commit on success,
    release on an exception (which still propagates)."""

    def __enter__(self):
        self.decision = self.client.reserve(self.product, self.quantity, **self._reserve_arguments())
        self._token = _current.set(self)
        self._stop = threading.Event()
        if self.keepalive:
            self._keeper = threading.Thread(target=self._keep_alive, name="tollgate-hold-keepalive", daemon=True)
            self._keeper.start()
        return self

    def extend(self, ttl=None):
        """Pushes the deadline to `ttl` (default: the hold's ttl) seconds from now."""
        return self.client.extend(self.id, self.ttl if ttl is None else ttl, account=self.account, timeout=self.timeout)

    def _keep_alive(self):
        while not self._stop.wait(self.ttl / 3):
            try:
                self.extend()
            except errors.TollgateError:
                return

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        _current.reset(self._token)
        if exc_type is None:
            try:
                self.result = self.client.commit(self.id, account=self.account, timeout=self.timeout, **self._usage)
            except errors.HoldExpired:
                spend = self._spend_instead() if self.on_expiry == "spend" else None
                if spend is None or spend["quantity"] == 0:
                    raise
                self.result = self.client.spend(**spend)  # refused like any spend when the credits are gone
                self.spent_after_expiry = True
            return False
        try:
            self.result = self.client.release(self.id, account=self.account, timeout=self.timeout)
        except errors.TollgateError:
            pass  # the hold ends at its deadline anyway; the caller's exception matters more
        return False


class AsyncHold(_HoldBase):
    """`async with client.hold("web_search") as hold:` — the asyncio twin of Hold."""

    async def __aenter__(self):
        self.decision = await self.client.reserve(self.product, self.quantity, **self._reserve_arguments())
        self._token = _current.set(self)
        self._keeper = asyncio.ensure_future(self._keep_alive()) if self.keepalive else None
        return self

    async def extend(self, ttl=None):
        return await self.client.extend(self.id, self.ttl if ttl is None else ttl, account=self.account, timeout=self.timeout)

    async def _keep_alive(self):
        try:
            while True:
                await asyncio.sleep(self.ttl / 3)
                await self.extend()
        except errors.TollgateError:
            return

    async def __aexit__(self, exc_type, exc, tb):
        if self._keeper is not None:
            self._keeper.cancel()
        _current.reset(self._token)
        if exc_type is None:
            try:
                self.result = await self.client.commit(self.id, account=self.account, timeout=self.timeout, **self._usage)
            except errors.HoldExpired:
                spend = self._spend_instead() if self.on_expiry == "spend" else None
                if spend is None or spend["quantity"] == 0:
                    raise
                self.result = await self.client.spend(**spend)
                self.spent_after_expiry = True
            return False
        try:
            self.result = await self.client.release(self.id, account=self.account, timeout=self.timeout)
        except errors.TollgateError:
            pass
        return False


def gated_function(client, product, quantity, account, member, ttl, keepalive, function):
    """What `client.gated(...)` applies to a tool function."""

    def resolve(value, args, kwargs):
        return value(*args, **kwargs) if callable(value) else value

    def hold_for(args, kwargs):
        return client.hold(product, resolve(quantity, args, kwargs), account=resolve(account, args, kwargs),
                           member=resolve(member, args, kwargs), ttl=ttl, keepalive=keepalive)

    if inspect.iscoroutinefunction(function):
        if not getattr(client, "is_async", False):
            raise TypeError("gate async tool functions with tollgate.AsyncClient")

        @functools.wraps(function)
        async def gated_async(*args, **kwargs):
            async with hold_for(args, kwargs):
                return await function(*args, **kwargs)
        return gated_async

    if getattr(client, "is_async", False):
        raise TypeError("an AsyncClient gates async functions; use tollgate.Client for plain ones")

    @functools.wraps(function)
    def gated(*args, **kwargs):
        with hold_for(args, kwargs):
            return function(*args, **kwargs)
    return gated
