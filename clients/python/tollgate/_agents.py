"""What the agent-framework integrations share (tollgate.langchain, tollgate.openai_agents):
the refusal an agent reads, and model calls priced by tokens."""

from typing import Any, Optional

from .failsafe import OfflineRefused


def refusal_text(name: str, refused: Any) -> str:
    """What the model reads, as a tool's output, when the gate refused the tool."""
    if isinstance(refused, OfflineRefused):
        return "%s was not run: %s. Tell the user, or try again later." % (name, refused.reason)
    headroom = getattr(refused, "headroom", None)
    left = "" if headroom is None else "; %d credits left" % headroom.funds
    return "out of credits: %s was not run (%s %s%s). Tell the user, or try a cheaper action." % (name, refused.name, refused.subject, left)


class TokenCharging:
    """The settings of a model-call charger: reserve `estimate` tokens' worth of `product`
    before a call, commit the tokens reported after it, in units of `tokens_per_unit` rounded up."""

    def _setup_charging(self, client: Any, product: str, estimate: int, tokens_per_unit: int, account: Optional[str],
                        member: Optional[str], ttl: float) -> None:
        if tokens_per_unit < 1 or estimate < 1:
            raise ValueError("estimate and tokens_per_unit must be at least 1")
        self.client, self.product, self.estimate, self.tokens_per_unit = client, product, estimate, tokens_per_unit
        self.account, self.member, self.ttl = account, member, ttl
        self.charged = 0

    def _units(self, tokens: int) -> int:
        return -(-tokens // self.tokens_per_unit)
