"""Tollgate for the OpenAI Agents SDK (needs `openai-agents`; `pip install tollgate[openai-agents]`).

    from tollgate.openai_agents import TollgateRunHooks, gated_tool

    @gated_tool(gate, "web_search")                 # or gated_tool(gate, "web_fetch", quantity="pages")
    async def search(query: str) -> str: ...

    agent = Agent(name="researcher", tools=[search], model=...)
    await Runner.run(agent, "…", hooks=TollgateRunHooks(gate, "llm-tokens", estimate=4_000, tokens_per_unit=1_000))

`gated_tool` makes a function tool (the SDK's `function_tool`, same name, docstring and
arguments) that reserves before the function runs, commits when it returns and releases when
it raises; out of credits, the function does not run and the model gets, as the tool's result,
a message it can read. `TollgateRunHooks` reserves `estimate` tokens' worth before each model
call and commits the tokens the response's usage reports (units rounded up), releasing on
an error; a refusal is raised (`tollgate.CreditsExhausted`) and ends the run before the call.
With `estimate={"input": 8_000, "output": 4_000}` and `product` a metered model (a rate per
dimension), each call is reserved at that worst case and committed by the usage's input and
output tokens (and cached ones, if the estimate names "cached") at the rates of the reserve.
Both take a `tollgate.Client` or a `tollgate.AsyncClient` (better: the SDK runs on asyncio).
"""

import functools
import inspect
from typing import Any, Callable, Optional, Union

from agents import RunHooks, function_tool

from . import errors
from ._agents import TokenCharging, refusal_text
from .failsafe import OfflineRefused


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def gated_tool(client: Any, product: str, quantity: Union[int, str] = 1, *, account: Optional[str] = None, member: Optional[str] = None,
               ttl: float = 300, **tool_options: Any) -> Callable[[Callable[..., Any]], Any]:
    """A decorator: the function as an Agents SDK tool that asks Tollgate before it runs.
    `quantity` is a number or the name of the function's integer argument."""

    def decorate(function: Callable[..., Any]) -> Any:
        signature = inspect.signature(function)

        @functools.wraps(function)
        async def gated(*args: Any, **kwargs: Any) -> Any:
            arguments = signature.bind_partial(*args, **kwargs).arguments
            units = quantity if isinstance(quantity, int) else arguments.get(quantity)
            if isinstance(units, bool) or not isinstance(units, int) or units < 1:
                return "%s was not run: its argument %s must be a whole number of at least 1" % (function.__name__, quantity)
            try:
                decision = await _maybe(client.reserve(product, units, account=account, member=member, ttl=ttl))
            except (errors.CreditsExhausted, OfflineRefused) as refused:
                return refusal_text(function.__name__, refused)
            try:
                result = await _maybe(function(*args, **kwargs))
            except BaseException:
                try:
                    await _maybe(client.release(decision.hold, account=account))
                except errors.TollgateError:
                    pass  # it ends at its deadline anyway; the tool's error matters more
                raise
            await _maybe(client.commit(decision.hold, account=account))
            return result

        return function_tool(gated, **tool_options)

    return decorate


class TollgateRunHooks(TokenCharging, RunHooks):
    """Reserves before each model call and commits the tokens it used (see the module's docstring)."""

    def __init__(self, client: Any, product: str, *, estimate: Any = 4_000, tokens_per_unit: int = 1_000, account: Optional[str] = None,
                 member: Optional[str] = None, ttl: float = 300) -> None:
        self._setup_charging(client, product, estimate, tokens_per_unit, account, member, ttl)
        self.holds: list = []

    async def on_llm_start(self, context: Any, agent: Any, system_prompt: Any, input_items: Any) -> None:
        decision = await _maybe(self._reserve_request())
        self.holds.append(decision.hold)

    async def on_llm_end(self, context: Any, agent: Any, response: Any) -> None:
        if not self.holds:
            return
        hold = self.holds.pop(0)
        usage = getattr(response, "usage", None)
        total = getattr(usage, "total_tokens", 0) or 0
        if total > 0:
            details = getattr(usage, "input_tokens_details", None)
            call = self._commit_request(hold, total, getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None),
                                        getattr(details, "cached_tokens", None))
        else:
            call = self.client.commit(hold, account=self.account)  # no usage reported: the estimate
        result = await _maybe(call)
        self.charged += result.committed

    async def release_all(self) -> None:
        """Releases the holds of model calls that never ended (the run raised); call it in a
        `finally` around `Runner.run` if runs may fail."""
        while self.holds:
            hold = self.holds.pop()
            try:
                await _maybe(self.client.release(hold, account=self.account))
            except errors.TollgateError:
                pass


__all__ = ["TollgateRunHooks", "gated_tool"]
