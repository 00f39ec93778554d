"""What the agent-framework integrations share (tollgate.langchain, tollgate.openai_agents):
the refusal an agent reads, and model calls priced by tokens."""

from typing import Any, Dict, Mapping, Optional, Union

from .failsafe import OfflineRefused


def refusal_text(name: str, refused: Any) -> str:
    """What the model reads, as a tool's output, when the gate refused the tool."""
    if isinstance(refused, OfflineRefused):
        return "%s was not run: %s. Tell the user, or try again later." % (name, refused.reason)
    headroom = getattr(refused, "headroom", None)
    left = "" if headroom is None else "; %d credits left" % headroom.funds
    return "out of credits: %s was not run (%s %s%s). Tell the user, or try a cheaper action." % (name, refused.name, refused.subject, left)


#: The dimensions a metered model call is priced by: input tokens (less those read from the
#: provider's cache, when "cached" is priced apart), output tokens, and cached input tokens.
DIMENSIONS = ("input", "output", "cached")


class TokenCharging:
    """The settings of a model-call charger. With `estimate` a number: reserve `estimate` tokens'
    worth of `product` before a call and commit the tokens reported after it, in units of
    `tokens_per_unit` rounded up. With `estimate` a mapping of dimensions to tokens
    (`{"input": 8000, "output": 4000}`, the worst case of a call): `product` is a metered product
    (a model, with a rate per dimension: `tollgate rate set-metered`), the call is reserved with
    RESERVE_METERED and committed with COMMIT_METERED by the input, output (and, if the estimate
    names it, cached) tokens the response reports, at the rates of the reserve."""

    def _setup_charging(self, client: Any, product: str, estimate: Union[int, Mapping[str, int]], tokens_per_unit: int, account: Optional[str],
                        member: Optional[str], ttl: float) -> None:
        if isinstance(estimate, Mapping):
            unknown = set(estimate) - set(DIMENSIONS)
            if not estimate or unknown or any(not isinstance(v, int) or v < 0 for v in estimate.values()):
                raise ValueError("a metered estimate maps some of %s to token counts, not %r" % (", ".join(DIMENSIONS), dict(estimate)))
            self.metered: Optional[Dict[str, int]] = dict(estimate)
        else:
            if tokens_per_unit < 1 or estimate < 1:
                raise ValueError("estimate and tokens_per_unit must be at least 1")
            self.metered = None
        self.client, self.product, self.estimate, self.tokens_per_unit = client, product, estimate, tokens_per_unit
        self.account, self.member, self.ttl = account, member, ttl
        self.charged = 0

    def _units(self, tokens: int) -> int:
        return -(-tokens // self.tokens_per_unit)

    def _reserve_request(self) -> Any:
        """The call that reserves a model call (not yet awaited on an async client)."""
        if self.metered is not None:
            return self.client.reserve_metered(self.product, self.metered, account=self.account, member=self.member, ttl=self.ttl)
        return self.client.reserve(self.product, self._units(self.estimate), account=self.account, member=self.member, ttl=self.ttl)

    def _commit_request(self, hold: int, total: Optional[int], input_tokens: Optional[int], output_tokens: Optional[int],
                        cached_tokens: Optional[int]) -> Any:
        """The call that commits a model call by what its response reports; with no usage
        reported, the hold (the estimate) is committed whole."""
        if self.metered is not None:
            if input_tokens is None and output_tokens is None:
                return self.client.commit(hold, account=self.account)
            used = {"input": input_tokens or 0, "output": output_tokens or 0}
            if "cached" in self.metered:
                used["cached"] = cached_tokens or 0
                used["input"] = max(0, used["input"] - used["cached"])
            return self.client.commit_metered(hold, {k: v for k, v in used.items() if k in self.metered}, account=self.account)
        if not total:
            return self.client.commit(hold, account=self.account)
        return self.client.commit(hold, quantity=self._units(total), account=self.account)
