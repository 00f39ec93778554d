"""Fixtures: the real tollgated, started per test from the Swift build (TOLLGATE_BIN, or
.build/debug or .build/release of the repository), and test certificates made by openssl."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import tollgate  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _binary():
    candidates = [os.environ.get("TOLLGATE_BIN", ""), ROOT / ".build" / "debug", ROOT / ".build" / "release"]
    for directory in candidates:
        if directory and (pathlib.Path(directory) / "tollgated").exists():
            return str(pathlib.Path(directory) / "tollgated")
    pytest.skip("no tollgated build found (run `swift build` first, or set TOLLGATE_BIN)")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, seconds=20):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("tollgated did not listen on %d" % port)


class Server:
    """A tollgated in `directory`; with `admin`, its admin HTTP port is on (`admin_url`)."""

    def __init__(self, directory, *flags, admin=False):
        self.directory = pathlib.Path(directory)
        self.port = free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.admin_port = free_port() if admin else None
        self.admin_url = "http://127.0.0.1:%d" % self.admin_port if admin else None
        self.log = open(self.directory / "tollgated.log", "w")
        self.process = subprocess.Popen(
            [_binary(), "--data-dir", str(self.directory / "data"), "--port", str(self.port),
             "--admin-port", str(self.admin_port) if admin else "off", "--log-level", "warning", *flags],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        if admin:
            wait_for_port(self.admin_port)
        token_file = self.directory / "data" / "admin.token"
        for _ in range(100):
            if token_file.exists() and token_file.read_text().strip():
                break
            time.sleep(0.05)
        self.token_file = str(token_file)

    def client(self, **options):
        options.setdefault("token_file", self.token_file)
        return tollgate.Client(self.address, **options)

    def async_client(self, **options):
        options.setdefault("token_file", self.token_file)
        return tollgate.AsyncClient(self.address, **options)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(*flags, name="server"):
        directory = tmp_path / name
        directory.mkdir()
        server = Server(directory, *flags)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server):
    return start_server()


def setup_account(client, account="acme", members=("alice", "bob"), credits=100, rate=1, product="web_search"):
    client.set_rate(product, rate)
    client.create_account(account)
    for member in members:
        client.add_member(account, member)
    if credits:
        client.add_grant(account, credits)


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN agent-runtime),
    made by openssl."""
    directory = tmp_path / "pki"
    directory.mkdir()

    def run(*arguments):
        subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test-ca")
    for name, subject, extension in (("server", "/CN=tollgated", "subjectAltName=IP:127.0.0.1"),
                                     ("client", "/CN=agent-runtime", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
            "-subj", subject)
        (directory / (name + ".ext")).write_text(extension + "\n")
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", name + ".pem", "-days", "2",
            "-extfile", name + ".ext")
    return directory
