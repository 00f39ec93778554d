"""`tollgate backup` (issue 20): a copy of a live server's data directory, restored into a fresh
server, gives the same balances, and a retry of a key decided before the backup is answered as
first answered — including keys the server had already handed to its disk tier."""

import json
import shutil
import subprocess
import threading
import time

from conftest import binary, fixtures


def start(directory, config):
    directory.mkdir(parents=True, exist_ok=True)
    return fixtures.Server(directory, "--config", str(config), admin=False)


def backup(source, destination):
    result = subprocess.run([binary("tollgate"), "backup", str(source), str(destination), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def config(tmp_path):
    # A checkpoint every second and a key table of 100, so the backup has checkpoints and
    # runs of keys on disk to copy, not only the journal.
    path = tmp_path / "tollgated.yaml"
    path.write_text("checkpointIntervalSeconds: 1\nidempotencyKeysMax: 100\n")
    return path


def test_a_backup_of_a_quiet_live_server_restores_the_same_balances_and_answers(tmp_path):
    settings = config(tmp_path)
    original = start(tmp_path / "a", settings)
    try:
        with original.client(account="acme") as admin:
            fixtures.setup_account(admin, credits=100_000)
            first = [admin.spend("web_search", 1, member="alice", key="early-%d" % n).cost for n in range(600)]
            assert first == [1] * 600
            # A checkpoint (every second here) writes the keys waiting for the disk tier: wait
            # until the data directory holds one and a run of keys, however slow the machine.
            data = tmp_path / "a" / "data"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (list((data / "journal").glob("*.tgc")) and list((data / "keys").glob("*.tgk"))):
                time.sleep(0.2)
            for n in range(50):
                admin.spend("web_search", 2, member="bob", key="late-%d" % n)
            expected = admin.balance().funds.pool
        summary = backup(tmp_path / "a" / "data", tmp_path / "copy")
        assert summary["checkpoints"] >= 1 and summary["keyRuns"] >= 1, summary
        assert summary["lastSequence"] > 0
    finally:
        original.stop()
    # Restore: the copy becomes a new server's data directory.
    shutil.copytree(tmp_path / "copy", tmp_path / "b" / "data")
    restored = start(tmp_path / "b", settings)
    try:
        with restored.client(account="acme") as gate:
            assert gate.balance().funds.pool == expected == 100_000 - 600 - 100
            # Retries are answered as first answered, not charged again: an early key (long in a
            # key run on disk) and a late one (in the journal after the checkpoint).
            assert gate.spend("web_search", 1, member="alice", key="early-3").cost == 1
            assert gate.spend("web_search", 2, member="bob", key="late-49").cost == 2
            assert gate.balance().funds.pool == expected
    finally:
        restored.stop()


def test_a_backup_taken_under_load_is_a_consistent_prefix(tmp_path):
    settings = config(tmp_path)
    original = start(tmp_path / "a", settings)
    spent = []
    stop = threading.Event()
    try:
        with original.client(account="acme") as admin:
            fixtures.setup_account(admin, credits=1_000_000)

        def load():
            with original.client(account="acme") as gate:
                n = 0
                while not stop.is_set():
                    gate.spend("web_search", 1, member="alice", key="load-%d" % n)
                    spent.append(n)
                    n += 1

        worker = threading.Thread(target=load)
        worker.start()
        deadline = time.monotonic() + 60
        while len(spent) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)   # load under way, however slow the machine
        summary = backup(tmp_path / "a" / "data", tmp_path / "copy")
        time.sleep(0.5)
        stop.set()
        worker.join(30)
        assert summary["lastSequence"] > 0
    finally:
        original.stop()
    shutil.copytree(tmp_path / "copy", tmp_path / "b" / "data")
    verify = subprocess.run([binary("tollgate"), "journal", "verify", str(tmp_path / "b" / "data" / "journal")], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout
    restored = start(tmp_path / "b", settings)
    try:
        with restored.client(account="acme") as gate:
            balance = gate.balance()
            consumed = 1_000_000 - balance.funds.pool
            # Some prefix of the spends: no more than were made, every credit accounted for.
            assert 0 < consumed <= len(spent)
            assert next(level for level in balance.levels if level.level == "account").consumed == consumed
    finally:
        restored.stop()
