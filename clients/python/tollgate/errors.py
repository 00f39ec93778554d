"""Typed exceptions, one per status of proto/PROTOCOL.md §7.1, plus the client's own.

    TollgateError
    ├── Refused                 statuses 1–24: the ledger said no (the call reached it)
    │   ├── InsufficientFunds, MemberCap, GroupCap, AccountCap, ParentCap  (CreditsExhausted)
    │   └── UnknownProduct, UnknownAccount, …, GrantNotLive, NotInGroup
    ├── ProtocolError           statuses 100 and up
    │   └── MalformedFrame, …, Unavailable, Unauthorized, Forbidden, InternalError, BadFrame
    ├── DeadlineExceeded        the call's deadline passed before an answer came
    └── ConnectionLost          the connection closed or failed (after retries, if any)
"""


class TollgateError(Exception):
    """Anything the client raises."""

    status = None


class Refused(TollgateError):
    """The ledger refused the request. `level` is request, member, group, account, parent or
    ledger; `subject` names what refused (a member, group, account, limit, or a sentence about an
    invalid argument); `headroom` is how much more each level allows, when known."""

    name = "refused"

    def __init__(self, level, subject, headroom=None, operation=None):
        self.level, self.subject, self.headroom, self.operation = level, subject, headroom, operation
        where = " (%s %s)" % (level, subject) if subject else " (%s)" % level
        super().__init__("%s refused: %s%s" % (operation or "request", self.name, where))


class CreditsExhausted(Refused):
    """Not enough credits, or a cap reached: the caller should not run the action."""


class ProtocolError(TollgateError):
    """The server could not take the request (statuses 100 and up); `message` is its sentence."""

    name = "protocolError"

    def __init__(self, message, operation=None):
        self.message, self.operation = message, operation
        super().__init__("%s: %s: %s" % (operation or "request", self.name, message))


class DeadlineExceeded(TollgateError):
    """No answer within the call's deadline. A mutating call may still have been applied:
    retry it with the same idempotency key to find out."""


class ConnectionLost(TollgateError):
    """The connection failed or closed, and retries (if any) did not get an answer."""


def _define(base, status, name, doc):
    cls = type(name[0].upper() + name[1:], (base,), {"status": status, "name": name, "__doc__": doc})
    globals()[cls.__name__] = cls
    return cls


_REFUSALS = [
    (1, "insufficientFunds", CreditsExhausted, "The grants (and the overdraft allowance) cannot cover the cost."),
    (2, "memberCap", CreditsExhausted, "A cap of the member is reached (the subject ends ' per hour' etc. for a cap over another window than the period)."),
    (3, "groupCap", CreditsExhausted, "A group's cap is reached (the subject names the group, and the window if not the period)."),
    (4, "accountCap", CreditsExhausted, "A cap of the account is reached (the subject names the window if not the period)."),
    (5, "parentCap", CreditsExhausted, "A cap of the parent account for the whole family is reached."),
    (6, "unknownProduct", Refused, "No rate in force for the product."),
    (7, "unknownAccount", Refused, "No such account."),
    (8, "unknownMember", Refused, "No such member in the account."),
    (9, "unknownGroup", Refused, "No such group in the account."),
    (10, "unknownHold", Refused, "No open hold with that id in that account."),
    (11, "unknownGrant", Refused, "No such grant."),
    (12, "holdExpired", Refused, "The hold passed its deadline and was released."),
    (13, "holdCommitted", Refused, "The hold was already committed."),
    (14, "holdReleased", Refused, "The hold was already released."),
    (15, "idempotencyConflict", Refused, "The idempotency key was used with other fields."),
    (16, "limitReached", Refused, "A ledger limit is reached (the subject names it)."),
    (17, "invalidArgument", Refused, "A field is out of its domain (the subject says which and why)."),
    (18, "alreadyExists", Refused, "It exists already."),
    (19, "inUse", Refused, "It is in use (e.g. a member with open holds)."),
    (20, "amountOutOfRange", Refused, "A quantity, amount or cost is out of range, or overflowed."),
    (21, "grantNotLive", Refused, "The grant is expired or voided, with credits still held on it."),
    (22, "notInGroup", Refused, "The member is not in the group."),
    (23, "familyMoved", Refused, "The account's family is on another shard now (the subject names it)."),
    (24, "concurrencyLimit", Refused, "The member (or account) has as many holds open as it may; commit or release one first."),
]
_PROTOCOL = [
    (100, "malformedFrame", "The body did not decode."),
    (101, "unsupportedVersion", "No common protocol version."),
    (102, "unknownOpcode", "The server does not know the opcode."),
    (103, "frameTooLarge", "The body is larger than the server accepts."),
    (104, "tooManyInFlight", "Too many unanswered requests on the connection."),
    (105, "tooManyConnections", "The server is at its connection limit."),
    (106, "idleTimeout", "The connection was idle too long."),
    (107, "handshakeRequired", "The first frame was not HELLO."),
    (108, "unavailable", "The server cannot decide now; retried with the same key."),
    (109, "unauthorized", "The credential was not accepted."),
    (110, "forbidden", "The credential's role or scope does not allow this request."),
    (111, "internalError", "A server bug; the request may or may not have been applied."),
    (112, "badFrame", "Bad magic, version or flags in a header."),
    (113, "notLeader", "In a cluster: this node does not lead the shard; the message names the leader."),
]

BY_STATUS = {}
for _status, _name, _base, _doc in _REFUSALS:
    BY_STATUS[_status] = _define(_base, _status, _name, _doc)
for _status, _name, _doc in _PROTOCOL:
    BY_STATUS[_status] = _define(ProtocolError, _status, _name, _doc)

#: Statuses after which the same request, with the same key, may succeed on a new attempt.
RETRYABLE = {104, 105, 106, 108, 111, 113}
#: Statuses after which the server closes the connection.
CLOSES_CONNECTION = {101, 103, 105, 106, 107, 109, 112}

__all__ = ["TollgateError", "Refused", "CreditsExhausted", "ProtocolError", "DeadlineExceeded", "ConnectionLost", "BY_STATUS"] + [
    cls.__name__ for cls in BY_STATUS.values()]
