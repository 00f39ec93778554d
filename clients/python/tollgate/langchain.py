"""Tollgate for LangChain and LangGraph agents (needs `langchain-core`; `pip install tollgate[langchain]`).

Tools — wrap them, one line:

    from tollgate.langchain import gate_tools
    tools = gate_tools([search, fetch], gate, prices={"search": "web_search", "fetch": ("web_fetch", "pages")})
    agent = create_react_agent(model, tools)

Each call of a priced tool reserves first (the quantity is a number, or the name of the call's
integer argument), runs the tool, and commits on success or releases if the tool raises. When
the credits are gone the tool does not run: the agent gets, as the tool's output, a message it
can read ("out of credits: …") instead of an exception that would end the run.

Model calls — a callback handler:

    handler = TollgateCallbackHandler(gate, product="llm-tokens", estimate=4_000, tokens_per_unit=1_000)
    model.invoke(messages, config={"callbacks": [handler]})

Before each model call it reserves `estimate` tokens' worth (`ceil(estimate / tokens_per_unit)`
units of `product`); after it, it commits the tokens the response reports in its usage
(`usage_metadata`, or the provider's `token_usage`), in units rounded up, so the gate never
under-charges; on an error it releases. A refusal is raised (`tollgate.CreditsExhausted`):
a callback cannot skip a model call, so it stops the run before the call is made.

Priced by dimension, per model (the model is a metered product with a rate for its input and
output tokens, and optionally cached ones: `tollgate rate set-metered gpt-x output 15 --per 1000`):

    handler = TollgateCallbackHandler(gate, product="gpt-x", estimate={"input": 8_000, "output": 4_000})

reserves that worst case at the model's rates, then commits the input and output tokens of the
response's `usage_metadata` (or `token_usage`'s prompt and completion tokens) at those rates.
"""

import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tools import BaseTool, ToolException

from . import errors
from ._agents import TokenCharging, refusal_text
from .failsafe import OfflineRefused
from .gate import current_hold

Price = Union[str, Tuple[str, Union[int, str]]]


class GatedTool(BaseTool):
    """A tool that asks Tollgate before it runs (see the module's docstring)."""

    inner: BaseTool
    client: Any
    product: str
    quantity: Union[int, str] = 1
    account: Optional[str] = None
    member: Optional[str] = None
    ttl: float = 300

    def __init__(self, inner: BaseTool, client: Any, product: str, quantity: Union[int, str] = 1, **extra: Any) -> None:
        super().__init__(name=inner.name, description=inner.description, args_schema=inner.args_schema, inner=inner, client=client,
                         product=product, quantity=quantity, handle_tool_error=True, **extra)

    def _units(self, arguments: Dict[str, Any]) -> int:
        if isinstance(self.quantity, int):
            return self.quantity
        value = arguments.get(self.quantity)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ToolException("%s was not run: its argument %s must be a whole number of at least 1" % (self.name, self.quantity))
        return value

    def _run(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        if getattr(self.client, "is_async", False):
            raise ToolException("%s is gated by an AsyncClient: call it asynchronously (ainvoke)" % self.name)
        units = self._units(kwargs)
        try:
            hold = self.client.hold(self.product, units, account=self.account, member=self.member, ttl=self.ttl)
            hold.__enter__()
        except (errors.CreditsExhausted, OfflineRefused) as refused:
            raise ToolException(refusal_text(self.name, refused)) from None
        try:
            result = self.inner.invoke(kwargs)
        except BaseException as failure:
            hold.__exit__(type(failure), failure, failure.__traceback__)
            raise
        hold.__exit__(None, None, None)
        return result

    async def _arun(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> Any:
        if not getattr(self.client, "is_async", False):
            return self._run(*args, **kwargs)
        units = self._units(kwargs)
        try:
            hold = self.client.hold(self.product, units, account=self.account, member=self.member, ttl=self.ttl)
            await hold.__aenter__()
        except (errors.CreditsExhausted, OfflineRefused) as refused:
            raise ToolException(refusal_text(self.name, refused)) from None
        try:
            result = await self.inner.ainvoke(kwargs)
        except BaseException as failure:
            await hold.__aexit__(type(failure), failure, failure.__traceback__)
            raise
        await hold.__aexit__(None, None, None)
        return result


def gate_tools(tools: Iterable[BaseTool], client: Any, prices: Dict[str, Price], *, account: Optional[str] = None,
               member: Optional[str] = None, ttl: float = 300) -> List[BaseTool]:
    """The tools, each priced one gated (`prices[name]` is a product, or (product, quantity) with
    quantity a number or the name of an integer argument); unpriced tools as they were."""
    gated: List[BaseTool] = []
    for tool in tools:
        price = prices.get(tool.name)
        if price is None:
            gated.append(tool)
            continue
        product, quantity = (price, 1) if isinstance(price, str) else price
        gated.append(GatedTool(tool, client, product, quantity, account=account, member=member, ttl=ttl))
    return gated


def _usage(response: Any) -> Tuple[Optional[int], Optional[int], Optional[int], Optional[int]]:
    """(total, input, output, cached input) tokens a model response reports, wherever the
    provider put them; None for what it does not say."""
    def number(value: Any) -> Optional[int]:
        return None if value is None else int(value)

    for generations in getattr(response, "generations", []) or []:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage and usage.get("total_tokens") is not None:
                details = usage.get("input_token_details") or {}
                return (number(usage["total_tokens"]), number(usage.get("input_tokens")), number(usage.get("output_tokens")),
                        number(details.get("cache_read")))
    output = getattr(response, "llm_output", None) or {}
    usage = output.get("token_usage") or output.get("usage") or {}
    return (number(usage.get("total_tokens")), number(usage.get("prompt_tokens", usage.get("input_tokens"))),
            number(usage.get("completion_tokens", usage.get("output_tokens"))), None)


class TollgateCallbackHandler(TokenCharging, BaseCallbackHandler):
    """Reserves before each model call and commits the tokens used after it (see the module's
    docstring). Works with the blocking `tollgate.Client`."""

    raise_error = True  # a refusal must stop the call, not be logged and ignored

    def __init__(self, client: Any, product: str, *, estimate: Union[int, Dict[str, int]] = 4_000, tokens_per_unit: int = 1_000,
                 account: Optional[str] = None, member: Optional[str] = None, ttl: float = 300) -> None:
        self._setup_charging(client, product, estimate, tokens_per_unit, account, member, ttl)
        self.holds: Dict[Any, Any] = {}
        self._lock = threading.Lock()

    def _start(self, run_id: Any) -> None:
        decision = self._reserve_request()
        with self._lock:
            self.holds[run_id] = decision.hold

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, **kwargs: Any) -> None:
        self._start(run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: Any, **kwargs: Any) -> None:
        self._start(run_id)

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        with self._lock:
            hold = self.holds.pop(run_id, None)
        if hold is None:
            return
        # No usage reported: the estimate is charged.
        result = self._commit_request(hold, *_usage(response))
        with self._lock:
            self.charged += result.committed

    def on_llm_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
        with self._lock:
            hold = self.holds.pop(run_id, None)
        if hold is not None:
            try:
                self.client.release(hold, account=self.account)
            except errors.TollgateError:
                pass  # it ends at its deadline anyway


__all__ = ["GatedTool", "TollgateCallbackHandler", "gate_tools", "current_hold"]
