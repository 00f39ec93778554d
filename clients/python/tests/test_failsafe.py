"""The fail policy (issue 22): `closed` raises when the gate is unreachable; `open` decides
locally within a bounded allowance per account, says so (`offline=True`), and settles every
local decision with the gate, once, when it answers again."""

import asyncio
import subprocess

import pytest

import tollgate
from conftest import _binary, free_port, setup_account, wait_for_port


class Restartable:
    """A tollgated that can be stopped and started again on the same port and data directory."""

    def __init__(self, directory):
        self.directory, self.port = directory, free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.token_file = str(directory / "data" / "admin.token")
        self.process = None
        self.start()

    def start(self):
        self.log = open(self.directory / "tollgated.log", "a")
        self.process = subprocess.Popen(
            [_binary(), "--data-dir", str(self.directory / "data"), "--port", str(self.port), "--admin-port", "off", "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.fixture
def gate_server(tmp_path):
    server = Restartable(tmp_path)
    yield server
    if server.process.poll() is None:
        server.stop()


def settings(server, **extra):
    return dict(token_file=server.token_file, account="acme", member="alice", timeout=5, retries=1, **extra)


def test_closed_raises_when_the_gate_is_unreachable(gate_server):
    with tollgate.Client(gate_server.address, **settings(gate_server)) as gate:
        setup_account(gate, credits=100)
        assert gate.spend("web_search", 1).cost == 1
        gate_server.stop()
        with pytest.raises((tollgate.ConnectionLost, tollgate.DeadlineExceeded)):
            gate.spend("web_search", 1)


def test_open_allows_within_the_allowance_and_settles_once(gate_server):
    with tollgate.Client(gate_server.address, **settings(gate_server, fail="open", offline_allowance=10)) as gate:
        setup_account(gate, credits=100, rate=2)
        assert gate.spend("web_search", 1).cost == 2          # online: the rate (2) is learned
        gate_server.stop()
        # Offline: 10 credits of allowance at 2 a unit.
        first = gate.spend("web_search", 2, key="offline-1")
        assert first.offline and first.cost == 4
        assert gate.check("web_search", 3).offline           # a check takes nothing
        with gate.hold("web_search", 2) as hold:             # a local hold: 4 credits while it runs
            assert hold.decision.offline and str(hold.id).startswith("offline-")
            hold.use(quantity=1)                             # 2 used; 2 come back
        with pytest.raises(tollgate.OfflineRefused) as refused:
            gate.spend("web_search", 3)                      # 4 + 2 used; 6 more would pass 10
        assert "allowance" in refused.value.reason
        with pytest.raises(tollgate.OfflineRefused):
            gate.spend("unpriced", 1)                        # no rate known: not allowed offline
        assert gate.offline_pending == 2
        # Back: the next call that reaches the gate settles both spends, with their keys.
        gate_server.start()
        assert gate.balance().funds.pool == 98                # answered, then the settlement ran
        assert gate.offline_pending == 0 and gate.overspent == []
        assert gate.balance().funds.pool == 100 - 2 - 4 - 2
        # Settled once: the same key again is the first answer, not a second charge.
        assert gate.spend("web_search", 2, key="offline-1").cost == 4
        assert gate.balance().funds.pool == 92


def test_a_spend_refused_when_settled_is_reported_and_bounded(gate_server):
    with tollgate.Client(gate_server.address, **settings(gate_server, fail="open", offline_allowance={"acme": 6})) as gate:
        setup_account(gate, credits=5)
        assert gate.spend("web_search", 1).cost == 1
        gate_server.stop()
        assert gate.spend("web_search", 6).offline               # allowed: within the allowance of 6
        with pytest.raises(tollgate.OfflineRefused):
            gate.spend("web_search", 1)
        with pytest.raises(tollgate.OfflineRefused):
            gate.spend("web_search", 1, account="other")         # an account not in the dict has none
        gate_server.start()
        assert gate.settle() == 0
        # The pool had 4 left: the 6 offline could not be charged; the overspend is reported.
        assert len(gate.overspent) == 1 and isinstance(gate.overspent[0][1], tollgate.InsufficientFunds)
        assert gate.balance().funds.pool == 4


def test_the_async_client_fails_open_the_same_way(gate_server):
    async def main():
        async with tollgate.AsyncClient(gate_server.address, **settings(gate_server, fail="open", offline_allowance=5,
                                                                          offline_rates={"web_search": 1})) as gate:
            setup = tollgate.Client(gate_server.address, token_file=gate_server.token_file)
            setup_account(setup, credits=50)
            setup.close()
            gate_server.stop()
            decision = await gate.spend("web_search", 3)   # priced by offline_rates: nothing seen online yet
            assert decision.offline and decision.cost == 3
            gate_server.start()
            assert await gate.settle() == 0
            assert (await gate.balance()).funds.pool == 47
    asyncio.run(main())


def test_fail_settings_are_checked():
    with pytest.raises(ValueError):
        tollgate.Client("127.0.0.1:1", fail="maybe")
    with pytest.raises(ValueError):
        tollgate.Client("127.0.0.1:1", fail="open")
