"""Fixtures for the end-to-end tests in Python — the dashboard in a browser, the CLI on a
terminal, deploy/: the real tollgated with its admin port (the Python client's test fixtures,
loaded from clients/python/tests), and headless Chromium driven over the DevTools protocol."""

import base64
import importlib.util
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("python_client_fixtures", ROOT / "clients" / "python" / "tests" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

ARTIFACTS = pathlib.Path(os.environ.get("TOLLGATE_ARTIFACTS", ROOT / ".build" / "artifacts"))


def binary(name):
    """A built executable of this repository (TOLLGATE_BIN, or .build/debug, or .build/release)."""
    tollgated = pathlib.Path(fixtures._binary())
    return str(tollgated.parent / name)


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium found (Debian: apt-get install chromium)")


class Browser:
    """One headless Chromium and one page in it, driven over the DevTools protocol."""

    def __init__(self):
        import websocket  # websocket-client, from PyPI

        self.profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
        self.process = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-port=0", "--remote-allow-origins=*", "--user-data-dir=" + self.profile, "--window-size=1400,1000",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError("chromium exited with status %s" % self.process.returncode)
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        if port is None:
            raise RuntimeError("chromium did not start its DevTools endpoint")
        targets = json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10))
        page = next(target for target in targets if target["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self.ids = itertools.count(1)
        self.console = []
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method, **params):
        request = next(self.ids)
        self.socket.send(json.dumps({"id": request, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(arg.get("value", "")) for arg in message["params"]["args"]))
            if message.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(message["params"]["exceptionDetails"])[:500])
            if message.get("id") == request:
                if "error" in message:
                    raise RuntimeError("%s: %s" % (method, message["error"]))
                return message.get("result", {})

    def navigate(self, url):
        self.send("Page.navigate", url=url)

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError("%s: %s" % (expression, result["exceptionDetails"]))
        return result["result"].get("value")

    def wait_for(self, expression, seconds=20):
        """The expression's value once it is truthy. Until the page has loaded it may throw
        (its elements are not there yet): that counts as not yet."""
        deadline = time.monotonic() + seconds
        failure = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError as error:
                value, failure = None, error
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError("timed out waiting for %s (last error: %s); console: %s" % (expression, failure, self.console[-5:]))

    def screenshot(self, name):
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    started = Browser()
    yield started
    started.close()


@pytest.fixture
def admin_server(tmp_path):
    directory = tmp_path / "server"
    directory.mkdir()
    server = fixtures.Server(directory, admin=True)
    server.token = pathlib.Path(server.token_file).read_text().strip()
    yield server
    server.stop()


def read_api(server, path, token=None):
    """GETs a read API path; returns (status, the JSON body)."""
    request = urllib.request.Request(server.admin_url + path)
    if token is not None:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
