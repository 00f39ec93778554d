"""The Python client against the real tollgated: every operation, both clients, the hold
context manager and the decorator, races with no overspend, retries across a dropped
connection that never charge twice, deadlines, typed errors, TLS and mTLS."""

import asyncio
import datetime
import hashlib
import json
import pathlib
import socket
import threading
import time

import pytest

import tollgate
from tollgate import _common, ops, wire
from conftest import setup_account

VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[3] / "proto" / "vectors.json").read_text())


# ---- the protocol vectors, through the client's own framing ----------------------------------

@pytest.mark.parametrize("vector", [v for v in VECTORS if v["direction"] == "request"], ids=lambda v: v["name"])
def test_the_client_frames_every_request_vector_to_its_bytes(vector):
    data = bytes.fromhex(vector["hex"])
    header, name, _, fields = wire.decode(data, "request")
    request = ops.Request(name, fields)
    assert _common.frame(name, header[3], request.body()) == data


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["direction"] == "response"], ids=lambda v: v["name"])
def test_the_client_reads_every_response_vector(vector):
    data = bytes.fromhex(vector["hex"])
    opcode, status, _, length = _common.parse_header(data[:16])
    name, value = _common.decode_body(opcode, status, data[16:16 + length])
    if status == 0:
        assert isinstance(ops.result(name, status, value), (dict, list, tollgate.types.Balance))
    else:
        with pytest.raises(tollgate.TollgateError) as raised:
            ops.result(name, status, value)
        assert raised.value.status == status
        assert raised.value.name == wire.status_name(status)


def test_builders_make_the_fields_the_protocol_names():
    request = ops.reserve("acme", "web_search", 3, "alice", ttl=1.5, key="k1")
    assert request.fields == [("key", "k1"), ("account", "acme"), ("member", "alice"), ("product", "web_search"), ("quantity", 3),
                              ("ttlMicroseconds", 1_500_000)]
    assert ops.commit("acme", 7, credits=5, key="k").fields[3] == ("amount", (2, 5))
    assert ops.spend("acme", "p").key  # a fresh key when none is given
    with pytest.raises(TypeError):
        ops.spend("acme", "p", 1.5)  # credits and quantities are integers
    with pytest.raises(ValueError):
        ops.batch([ops.add_member("acme", "x")])


# ---- every operation --------------------------------------------------------------------------

def test_every_gate_operation(server):
    with server.client(account="acme", member="alice") as gate:
        assert gate.server.role == "admin"
        setup_account(gate, credits=100, rate=2)
        assert gate.ping() == {}
        assert gate.check("web_search", 3).cost == 6
        hold = gate.reserve("web_search", 5, ttl=30)
        assert hold.hold and hold.cost == 10 and hold.deadline
        assert gate.extend(hold.hold, 60).deadline > hold.deadline
        committed = gate.commit(hold.hold, quantity=3)
        assert (committed.committed, committed.returned) == (6, 4)
        other = gate.reserve("web_search", 1)
        assert gate.release(other.hold).released == 2
        assert gate.spend("web_search", 2).cost == 4
        balance = gate.balance()
        assert balance.funds.pool == 100 - 6 - 4
        assert balance.open_holds == 0
        assert balance.grants[0].consumed == 10 and balance.grants[0].state == "active"
        time.sleep(0.1)  # BALANCE_AT reads the journal on disk; async mode flushes every 10 ms
        assert gate.balance_at(balance.at).funds.pool == 90
        answers = gate.batch([ops.check("acme", "web_search", 1, "alice"), ops.spend("acme", "web_search", 1000, "alice"),
                              ops.spend("acme", "web_search", 1, "bob")])
        assert answers[0].cost == 2
        assert isinstance(answers[1], tollgate.InsufficientFunds)
        assert answers[2].headroom.funds == 88


def test_every_admin_operation(server):
    with server.client() as admin:
        admin.set_rate("web_search", 1)
        admin.create_account("parent-co", overage=("overdraft", 10), period=("fixed", 0, 3600))
        admin.create_account("acme")
        admin.set_parent("acme", "parent-co")
        admin.set_overage("acme", ("finish", 10))
        admin.set_period("acme", ("monthly", 0))
        admin.set_account_cap("acme", 500)
        admin.add_member("acme", "alice")
        admin.add_member("acme", "carol")
        admin.remove_member("acme", "carol")
        admin.set_member_cap("acme", "alice", 50)
        admin.create_group("acme", "research")
        admin.add_to_group("acme", "research", "alice")
        admin.set_group_cap("acme", "research", 40)
        admin.create_group("acme", "temp")
        admin.delete_group("acme", "temp")
        grant = admin.add_grant("acme", 100, source="top-up").grant
        spare = admin.add_grant("acme", 5, member="alice").grant
        admin.void_grant("acme", spare)
        admin.set_account_rate("acme", "web_search", 3)
        admin.set_alert("acme", "low", ("credits", 10))
        admin.remove_alert("acme", "low")
        admin.set_auto_recharge("acme", below=5, amount=20, max_per_period=2)
        admin.set_auto_recharge("acme")  # off
        admin.set_subscription("acme", {"credits_per_seat": 10, "scope": "pooled"})
        admin.set_seats("acme", 2)
        admin.define_plan("starter", grants=[{"amount": 25}], alerts=[("empty", "depleted")])
        admin.provision("newco", "starter", members=["dan"], seats=1)
        admin.remove_from_group("acme", "research", "alice")

        acme = admin.balance(account="acme", member="alice")
        assert {g.id for g in acme.grants} >= {grant}
        assert spare not in {g.id for g in acme.grants}  # voided: no longer listed
        with pytest.raises((tollgate.GrantNotLive, tollgate.UnknownGrant)):
            admin.void_grant("acme", spare)
        assert acme.subscription is not None
        assert admin.check("web_search", 1, account="acme", member="alice").credits_per_unit == 3
        levels = {level.level: level.limit for level in acme.levels}
        assert levels["member"] == 50 and levels["account"] == 500
        assert admin.balance(account="newco").funds.pool == 25
        with pytest.raises(tollgate.AlreadyExists):
            admin.create_account("acme")
        with pytest.raises(tollgate.UnknownAccount):
            admin.spend("web_search", account="nobody")


def test_the_asyncio_client(server):
    async def main():
        async with server.async_client(account="acme", member="alice") as gate:
            await gate.set_rate("web_search", 1)
            await gate.create_account("acme")
            await gate.add_member("acme", "alice")
            await gate.add_grant("acme", 10)
            assert (await gate.server()).role == "admin"
            assert (await gate.check("web_search", 2)).cost == 2
            hold = await gate.reserve("web_search", 4)
            assert (await gate.commit(hold.hold, credits=3)).returned == 1
            assert (await gate.spend("web_search")).headroom.funds == 6
            assert (await gate.balance()).funds.pool == 6
            answers = await gate.batch([ops.spend("acme", "web_search", 100, "alice")])
            assert isinstance(answers[0], tollgate.CreditsExhausted)
            with pytest.raises(tollgate.InsufficientFunds):
                await gate.spend("web_search", 7)
    asyncio.run(main())


# ---- the hold and the decorator ---------------------------------------------------------------

def test_a_hold_commits_what_was_used_and_releases_on_an_exception(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=100)
        with gate.hold("web_search", 10) as hold:
            assert tollgate.current_hold() is hold
            assert gate.balance().funds.pool == 90  # held
            hold.use(quantity=4)
        assert tollgate.current_hold() is None
        assert (hold.result.committed, hold.result.returned) == (4, 6)
        with pytest.raises(RuntimeError):
            with gate.hold("web_search", 10) as failing:
                raise RuntimeError("the tool failed")
        assert failing.result.released == 10
        with gate.hold("web_search", 5, ttl=0.6, keepalive=True) as kept:
            time.sleep(1.5)  # past the first deadline: kept alive by extensions
        assert kept.result.committed == 5
        balance = gate.balance()
        assert balance.funds.pool == 100 - 4 - 5 and balance.open_holds == 0


def test_the_decorator_gates_tool_calls_and_refuses_when_credits_are_short(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=5, rate=2)
        ran = []

        @gate.gated(product="web_search", quantity=lambda query, pages=1: pages)
        def search(query, pages=1):
            ran.append(query)
            if query == "boom":
                raise ValueError("tool error")
            return "results for " + query

        assert search("cats") == "results for cats"
        with pytest.raises(ValueError):
            search("boom")  # released: costs nothing
        with pytest.raises(tollgate.InsufficientFunds) as refused:
            search("dogs", pages=2)  # 4 credits, 3 left
        assert ran == ["cats", "boom"]  # the refused call never ran
        assert refused.value.headroom.funds == 3
        assert gate.balance().funds.pool == 3


def test_the_async_decorator_and_hold(server):
    async def main():
        async with server.async_client(account="acme", member="alice") as gate:
            await gate.set_rate("web_search", 1)
            await gate.create_account("acme")
            await gate.add_member("acme", "alice")
            await gate.add_grant("acme", 3)

            @gate.gated(product="web_search")
            async def tool(fail=False):
                if fail:
                    raise KeyError("x")
                tollgate.current_hold().use(credits=1)
                return "done"

            assert await tool() == "done"
            with pytest.raises(KeyError):
                await tool(fail=True)
            async with gate.hold("web_search", 2) as hold:
                pass
            assert hold.result.committed == 2
            with pytest.raises(tollgate.CreditsExhausted):
                await tool()
            assert (await gate.balance()).funds.pool == 0
    asyncio.run(main())


def test_decorating_across_kinds_is_refused(server):
    with server.client(account="acme") as gate:
        with pytest.raises(TypeError):
            @gate.gated(product="p")
            async def tool():
                pass


# ---- concurrency ------------------------------------------------------------------------------

def test_threads_racing_on_one_pool_never_overspend(server):
    with server.client(account="acme", member="alice") as admin:
        setup_account(admin, members=["m%d" % i for i in range(8)], credits=100)
    gate = server.client(account="acme")
    outcomes = []
    lock = threading.Lock()

    def worker(index):
        for _ in range(30):
            try:
                gate.spend("web_search", member="m%d" % (index % 8))
                result = "ok"
            except tollgate.InsufficientFunds:
                result = "refused"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 100
    assert outcomes.count("refused") == 16 * 30 - 100
    assert gate.balance().funds.pool == 0
    gate.close()


def test_asyncio_tasks_racing_on_one_pool_never_overspend(server):
    with server.client() as admin:
        setup_account(admin, credits=150)

    async def main():
        async with server.async_client(account="acme", member="alice") as gate:
            async def one():
                try:
                    await gate.spend("web_search")
                    return True
                except tollgate.InsufficientFunds:
                    return False
            results = await asyncio.gather(*(one() for _ in range(400)))
            assert results.count(True) == 150
            assert (await gate.balance()).funds.pool == 0
    asyncio.run(main())


# ---- retries, deadlines, errors ---------------------------------------------------------------

class DroppingProxy:
    """Forwards between a client and tollgated, and cuts the connection the first `drops`
    times a SPEND answer comes back — after the server has applied the spend — and swallows
    the answers whose operation is in `withhold` (a server that is slow to answer)."""

    def __init__(self, target_port, drops, withhold=(), drop_on="SPEND"):
        self.target_port, self.drops, self.withhold, self.drop_on = target_port, drops, set(withhold), drop_on
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source, target, answers):
        buffer = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if answers:
                    buffer += data
                    while len(buffer) >= 16:
                        length = int.from_bytes(buffer[12:16], "big")
                        if len(buffer) < 16 + length:
                            break
                        frame, buffer = buffer[:16 + length], buffer[16 + length:]
                        if frame[3] == wire.OPCODE_BY_NAME[self.drop_on] and self.drops > 0:
                            self.drops -= 1
                            raise ConnectionAbortedError
                        if wire.OPCODES.get(frame[3]) in self.withhold:
                            continue
                        target.sendall(frame)
                else:
                    target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        self.listener.close()


def test_retries_across_a_dropped_connection_never_charge_twice(server):
    with server.client() as admin:
        setup_account(admin, credits=100)
    proxy = DroppingProxy(server.port, drops=2)
    with tollgate.Client("127.0.0.1:%d" % proxy.port, token_file=server.token_file, account="acme", member="alice", retries=3) as gate:
        decision = gate.spend("web_search", 7)  # answered on the third connection
        assert decision.cost == 7
        assert proxy.connections == 3
        assert gate.balance().funds.pool == 93  # charged once
        # With no retries left, the caller hears of the drop; its retry with the key is safe.
        proxy.drops = 1
        gate.retries = 0
        with pytest.raises(tollgate.ConnectionLost):
            gate.spend("web_search", 5, key="step-42")
        gate.retries = 3
        assert gate.spend("web_search", 5, key="step-42").cost == 5
        assert gate.balance().funds.pool == 88
    proxy.close()

    async def main():
        proxy = DroppingProxy(server.port, drops=1)
        async with tollgate.AsyncClient("127.0.0.1:%d" % proxy.port, token_file=server.token_file, account="acme", member="alice") as gate:
            assert (await gate.spend("web_search", 3)).cost == 3
            assert (await gate.balance()).funds.pool == 85
            assert proxy.connections == 2
        proxy.close()
    asyncio.run(main())


def test_a_silent_server_meets_the_deadline():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(tollgate.DeadlineExceeded):
        tollgate.Client("127.0.0.1:%d" % port, token="t", timeout=0.5).ping()
    assert time.monotonic() - started < 2

    async def main():
        with pytest.raises(tollgate.DeadlineExceeded):
            await tollgate.AsyncClient("127.0.0.1:%d" % port, token="t", timeout=0.5).ping()
    asyncio.run(main())
    listener.close()


def test_a_call_that_exceeds_its_own_deadline(server):
    with server.client(account="acme") as gate:
        setup_account(gate)
        with pytest.raises(tollgate.DeadlineExceeded, match="before the request was sent"):
            gate.balance(timeout=0)
        assert gate.balance().funds.pool == 100  # the connection is still good

    async def main():
        async with server.async_client(account="acme") as gate:
            # Before the first connection too: it is not attempted (under load, a handshake
            # given no time could run out first and say so instead).
            with pytest.raises(tollgate.DeadlineExceeded, match="before the request was sent"):
                await gate.balance(timeout=0)
            assert (await gate.balance()).funds.pool == 100
            with pytest.raises(tollgate.DeadlineExceeded, match="before the request was sent"):
                await gate.balance(timeout=0)
            assert (await gate.balance()).funds.pool == 100
    asyncio.run(main())
    with server.client(account="acme") as fresh:
        with pytest.raises(tollgate.DeadlineExceeded, match="before the request was sent"):
            fresh.balance(timeout=0)


def test_an_answer_later_than_the_deadline(server):
    with server.client() as admin:
        setup_account(admin)
    proxy = DroppingProxy(server.port, drops=0, withhold={"BALANCE"})
    address = "127.0.0.1:%d" % proxy.port
    with tollgate.Client(address, token_file=server.token_file, account="acme", member="alice") as gate:
        started = time.monotonic()
        with pytest.raises(tollgate.DeadlineExceeded, match="no answer within the deadline"):
            gate.balance(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 3
        gate.spend("web_search")  # the connection is still good for other answers

    async def main():
        async with tollgate.AsyncClient(address, token_file=server.token_file, account="acme", member="alice") as gate:
            with pytest.raises(tollgate.DeadlineExceeded, match="no answer within the deadline"):
                await gate.balance(timeout=0.3)
            await gate.spend("web_search")
    asyncio.run(main())
    proxy.close()


def test_credentials_and_roles_give_typed_errors(start_server, tmp_path):
    admin_token, reader_token = "admin-token-for-tests-0001", "reader-token-for-tests-0001"
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text(
        "identities:\n"
        "  - {name: admin, tokenSha256: %s, role: admin}\n"
        "  - {name: reports, tokenSha256: %s, role: read, accounts: \"*\"}\n"
        % (hashlib.sha256(admin_token.encode()).hexdigest(), hashlib.sha256(reader_token.encode()).hexdigest()))
    server = start_server("--credentials", str(credentials))
    with tollgate.Client(server.address, token=admin_token) as admin:
        setup_account(admin)
    with tollgate.Client(server.address, token=reader_token, account="acme") as reader:
        assert reader.server.role == "read" and reader.server.identity == "reports"
        assert reader.balance().funds.pool == 100
        with pytest.raises(tollgate.Forbidden):
            reader.spend("web_search")
    with pytest.raises(tollgate.Unauthorized):
        tollgate.Client(server.address, token="wrong").ping()
    with pytest.raises(ValueError):
        tollgate.Client("no-port")


def test_events_arrive_on_a_subscription(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=10)
        gate.set_alert("acme", "low", ("credits", 5))
        with gate.subscribe(account="acme") as events:
            gate.spend("web_search", 6)
            event = events.next(timeout=5)
            assert event.kind == "alert" and event.alert == "low" and event.balance == 4
            assert event.sequence >= events.next_sequence


def test_window_caps_soft_caps_and_open_hold_bounds(server):
    # The hour and the UTC day roll on the server's clock: start well inside one.
    to_next_hour = 3600 - time.time() % 3600
    if to_next_hour < 30:
        time.sleep(to_next_hour + 1)
    with server.client(account="winco", member="alice") as gate:
        setup_account(gate, account="winco", credits=1000)
        gate.set_cap("winco", 10, member="alice", per="hour")
        gate.set_cap("winco", 5, member="alice", per="day", soft=True)
        gate.set_concurrency("winco", 2, each_member=True)
        with gate.subscribe(account="winco") as events:
            gate.spend("web_search", 6)
            event = events.next(timeout=5)
            assert event.kind == "softLimit" and event.soft_limit == "member" and event.subject == "alice"
            assert event.window == "day" and event.limit == 5 and event.used == 6
        with pytest.raises(tollgate.MemberCap) as refused:
            gate.spend("web_search", 5)
        assert refused.value.subject == "alice per hour"
        gate.reserve("web_search", 1)
        gate.reserve("web_search", 1)
        with pytest.raises(tollgate.ConcurrencyLimit):
            gate.reserve("web_search", 1)
        balance = gate.balance()
        member = next(level for level in balance.levels if level.level == "member")
        assert [(c.window, c.mode, c.limit, c.used) for c in member.caps] == [("hour", "hard", 10, 8), ("day", "soft", 5, 8)]
        assert balance.open_holds == 2 and balance.open_holds_limit == 2
        with pytest.raises(ValueError):
            gate.set_cap("winco", 5, per="fortnight")


def test_a_grant_scoped_to_one_product(server):
    with server.client(account="promo", member="alice") as gate:
        setup_account(gate, account="promo", credits=5)
        gate.set_rate("image_gen", 1)
        promo = gate.add_grant("promo", 50, source="promotional", products=["image_gen"], priority=-1).grant
        with pytest.raises(tollgate.InsufficientFunds):
            gate.spend("web_search", 6)
        gate.spend("image_gen", 40)
        grants = {g.id: g for g in gate.balance().grants}
        assert grants[promo].products == ["image_gen"] and grants[promo].available == 10
        with pytest.raises(ValueError):
            gate.add_grant("promo", 5, products="image_gen")


def test_an_llm_call_reserved_at_its_worst_case_and_committed_by_its_tokens(server):
    with server.client(account="llm", member="alice") as gate:
        setup_account(gate, account="llm", credits=1000)
        gate.set_metered_rate("gpt-x", "input", 3, per=1000)
        gate.set_metered_rate("gpt-x", "output", 15, per=1000)
        held = gate.reserve_metered("gpt-x", {"input": 8000, "output": 4000})
        assert held.cost == 84
        done = gate.commit_metered(held.hold, {"input": 5123, "output": 1001})
        assert done.committed == 31 and done.returned == 53
        assert gate.spend_metered("gpt-x", [("input", 1)]).cost == 1  # 0.003 rounds up
        with pytest.raises(tollgate.UnknownProduct):
            gate.spend_metered("gpt-x", {"images": 1})
        with pytest.raises(ValueError):
            gate.set_metered_rate("gpt-x", "input", 3, per=10)
        assert gate.balance().funds.pool == 1000 - 31 - 1
        # Metered operations batch like the others.
        held, spent = gate.batch([tollgate.ops.reserve_metered("llm", "gpt-x", {"input": 1000}, member="alice"),
                                  tollgate.ops.spend_metered("llm", "gpt-x", {"output": 1000}, member="alice")])
        assert held.cost == 3 and held.hold is not None and spent.cost == 15


# ---- TLS and mTLS -----------------------------------------------------------------------------

def test_tls_and_mtls(start_server, pki, tmp_path):
    tls = start_server("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), name="tls")
    with tollgate.Client(tls.address, token_file=tls.token_file, ca_file=str(pki / "ca.pem")) as gate:
        setup_account(gate)
        assert gate.spend("web_search", account="acme").cost == 1
    with pytest.raises(tollgate.TollgateError):
        tollgate.Client(tls.address, token_file=tls.token_file, timeout=2, retries=0).ping()  # plaintext to a TLS port

    credentials = tmp_path / "mtls.yaml"
    credentials.write_text("identities:\n  - {name: runtime, certificate: agent-runtime, role: gate, accounts: [acme]}\n")
    mtls = start_server("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), "--tls-client-ca",
                        str(pki / "ca.pem"), "--credentials", str(credentials), name="mtls")

    async def main():
        async with tollgate.AsyncClient(mtls.address, ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                                        key_file=str(pki / "client.key"), account="acme") as gate:
            info = await gate.server()
            assert (info.identity, info.role) == ("runtime", "gate")
            with pytest.raises(tollgate.UnknownAccount):
                await gate.spend("web_search")  # a gate identity may ask; the account does not exist here
            with pytest.raises(tollgate.Forbidden):
                await gate.spend("web_search", account="other")
    asyncio.run(main())
    with pytest.raises(tollgate.TollgateError):
        tollgate.Client(mtls.address, ca_file=str(pki / "ca.pem"), timeout=2, retries=0).ping()  # no client certificate


def test_grant_sources_have_one_spelling():
    from tollgate import ops
    assert ops._source("top-up") == ops._source("top_up") == 1
    with pytest.raises(ValueError):
        ops._source("topup")
    assert ops._SOURCE_NAMES[1] == "top-up"


def test_a_balance_is_typed_with_datetimes_and_names():
    vector = next(v for v in VECTORS if v["name"] == "balance")
    data = bytes.fromhex(vector["hex"])
    opcode, status, _, length = _common.parse_header(data[:16])
    name, value = _common.decode_body(opcode, status, data[16:16 + length])
    balance = ops.result(name, status, value)
    assert isinstance(balance, tollgate.Balance)
    assert balance.at == datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert balance.period_end > balance.period_start
    assert balance.funds.overage == "deny" and balance.funds.pool == 1390 and balance.funds.balance == 1390
    assert [level.level for level in balance.levels] == ["member", "account"]
    pool, own, promo = balance.grants
    assert (pool.member, own.member) == (None, "ana")
    assert promo.products == ["ai.preview", "ai.summary"] and pool.products == [] and promo.source == "promotional"
    member, account = balance.levels
    assert [(c.window, c.mode, c.limit) for c in member.caps] == [("hour", "hard", 500)]
    assert [(c.window, c.mode) for c in account.caps] == [("period", "hard"), ("day", "soft")]
    assert balance.open_holds_limit == 4
    assert pool.source == "recurring" and own.source == "top-up" and own.state == "active"
    assert own.expires_at is None and pool.expires_at == balance.period_end
    assert balance.subscription is None and balance.burn == tollgate.types.Burn(0, 0)
    assert balance["funds"] is balance.funds and balance.burn_last_hour == 0


def test_a_hold_that_expires_while_the_tool_runs(server):
    with server.client(account="acme", member="alice") as gate:
        setup_account(gate, credits=100)
        # The default: HoldExpired on exit, nothing charged, the credits back.
        with pytest.raises(tollgate.HoldExpired):
            with gate.hold("web_search", 5, ttl=0.2):
                time.sleep(0.6)
        assert gate.balance().funds.pool == 100
        # on_expiry="spend": what was used is spent instead, once.
        with gate.hold("web_search", 5, ttl=0.2, key="long-step", on_expiry="spend") as hold:
            time.sleep(0.6)
            hold.use(quantity=3)
        assert hold.spent_after_expiry and hold.result.cost == 3
        assert gate.balance().funds.pool == 97
        # Usage in credits cannot be spent without the hold: HoldExpired again.
        with pytest.raises(tollgate.HoldExpired):
            with gate.hold("web_search", 5, ttl=0.2, on_expiry="spend") as hold:
                time.sleep(0.6)
                hold.use(credits=2)
        assert gate.balance().funds.pool == 97
        with pytest.raises(ValueError):
            gate.hold("web_search", on_expiry="maybe")

    async def main():
        async with server.async_client(account="acme", member="alice") as gate:
            async with gate.hold("web_search", 4, ttl=0.2, on_expiry="spend") as hold:
                await asyncio.sleep(0.6)
            assert hold.spent_after_expiry and hold.result.cost == 4
            assert (await gate.balance()).funds.pool == 93
    asyncio.run(main())
