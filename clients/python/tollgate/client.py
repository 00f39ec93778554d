"""The blocking client: one pipelined connection shared by any number of threads."""

import queue
import socket
import threading
import time

from . import _common, errors, failsafe, ops
from .gate import Hold


class _Lost(Exception):
    """The connection ended before the answer came (internal; retried or turned into ConnectionLost)."""


class _Connection:
    """One TCP (or TLS) connection after HELLO. A reader thread hands each answer to the
    caller waiting for its request id; callers on any thread write under a lock."""

    def __init__(self, sock, info):
        self.sock, self.info = sock, info
        self.write_lock = threading.Lock()
        self.lock = threading.Lock()
        self.pending = {}  # request id -> [event, (status, name, value) or None] or a queue (streams)
        self.next_id = 1
        self.in_flight = threading.BoundedSemaphore(max(1, info["max_in_flight"]))
        self.failure = None
        self.reader = threading.Thread(target=self._read_loop, name="tollgate-reader", daemon=True)
        self.reader.start()

    @property
    def alive(self):
        return self.failure is None

    def _read_exact(self, size):
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise _Lost("the server closed the connection")
            data += chunk
        return bytes(data)

    def _read_loop(self):
        try:
            while True:
                opcode, status, request_id, length = _common.parse_header(self._read_exact(_common.HEADER_SIZE))
                name, value = _common.decode_body(opcode, status, self._read_exact(length) if length else b"")
                with self.lock:
                    waiter = self.pending.get(request_id)
                    if waiter is not None and not isinstance(waiter, queue.Queue):
                        del self.pending[request_id]
                if waiter is None:
                    if request_id == 0 and status >= 100:
                        raise _Lost("the server ended the connection: %s" % errors.BY_STATUS.get(status, errors.ProtocolError).__name__)
                    continue  # an answer nobody waits for any more (its caller's deadline passed)
                if isinstance(waiter, queue.Queue):
                    waiter.put((status, name, value))
                else:
                    waiter[1] = (status, name, value)
                    waiter[0].set()
        except Exception as error:  # noqa: BLE001 — any failure ends the connection for everyone waiting
            self._fail(error if isinstance(error, _Lost) else _Lost("connection failed: %s" % error))

    def _fail(self, error):
        with self.lock:
            if self.failure is None:
                self.failure = error
            waiters, self.pending = list(self.pending.values()), {}
        for waiter in waiters:
            if isinstance(waiter, queue.Queue):
                waiter.put(None)
            else:
                waiter[0].set()
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._fail(_Lost("closed by the client"))

    def _register(self, waiter):
        with self.lock:
            if self.failure is not None:
                raise self.failure
            request_id, self.next_id = _common.next_request_id(self.pending, self.next_id)
            self.pending[request_id] = waiter
            return request_id

    def _send(self, data):
        try:
            with self.write_lock:
                self.sock.sendall(data)
        except OSError as error:
            self._fail(_Lost("send failed: %s" % error))
            raise self.failure from error

    def round_trip(self, request, deadline):
        """(status, name, value) of one request; raises _Lost or DeadlineExceeded."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # nothing sent, so nothing applied: safe to retry
            raise errors.DeadlineExceeded("%s: the deadline passed before the request was sent" % request.name)
        if not self.in_flight.acquire(timeout=remaining):
            raise errors.DeadlineExceeded("%s: %d requests already in flight on the connection" % (request.name, self.info["max_in_flight"]))
        try:
            waiter = [threading.Event(), None]
            request_id = self._register(waiter)
            self._send(_common.frame(request.name, request_id, request.body()))
            if not waiter[0].wait(max(0.0, deadline - time.monotonic())):
                with self.lock:
                    self.pending.pop(request_id, None)
                raise errors.DeadlineExceeded("%s: no answer within the deadline" % request.name)
            if waiter[1] is None:
                raise self.failure or _Lost("connection failed")
            return waiter[1]
        finally:
            self.in_flight.release()

    def stream(self, request):
        """Sends a request whose answers keep coming (SUBSCRIBE); returns their queue."""
        answers = queue.Queue()
        request_id = self._register(answers)
        self._send(_common.frame(request.name, request_id, request.body()))
        return answers


def _connect(host, port, context, server_name, token, client_name, deadline):
    timeout = max(0.001, deadline - time.monotonic())
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise _Lost("cannot connect to %s:%d: %s" % (host, port, error)) from error
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=server_name or host)
            except (OSError, ValueError) as error:
                raise errors.ConnectionLost("TLS handshake with %s:%d failed: %s" % (host, port, error)) from error
        sock.sendall(_common.hello_request(client_name, token))
        header = _recv_exact(sock, _common.HEADER_SIZE)
        opcode, status, _, length = _common.parse_header(header)
        name, value = _common.decode_body(opcode, status, _recv_exact(sock, length) if length else b"")
        info = _common.hello_result(status, value)
        sock.settimeout(None)
        return _Connection(sock, info)
    except socket.timeout as error:
        sock.close()
        raise errors.DeadlineExceeded("connecting to %s:%d took longer than the deadline" % (host, port)) from error
    except _Lost:
        sock.close()
        raise
    except errors.TollgateError:
        sock.close()
        raise
    except OSError as error:
        sock.close()
        raise _Lost("connecting to %s:%d failed: %s" % (host, port, error)) from error


def _recv_exact(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _Lost("the server closed the connection during the handshake")
        data += chunk
    return bytes(data)


class Client(_common.Operations):
    """A blocking Tollgate client.

        gate = tollgate.Client("127.0.0.1:7400", token="…", account="acme", member="alice")
        decision = gate.spend(product="web_search")           # or raises InsufficientFunds, …

    One connection, opened on first use and shared by every thread (requests are pipelined:
    each thread waits only for its own answer). Every call has a deadline (`timeout`, in
    seconds, per call or for the client). Mutating calls carry an idempotency key — yours, or
    a fresh one — and are retried with the same key when the connection drops or the server
    says `unavailable`, so a retry never charges twice. `account` and `member`, if given,
    are the defaults for calls that take them.
    """

    hold_class = Hold

    def __init__(self, address=None, *, token=None, token_file=None, tls=False, ca_file=None, cert_file=None,
                 key_file=None, server_name=None, timeout=5.0, retries=3, client_name="tollgate-python", account=None, member=None,
                 fail="closed", offline_allowance=None, offline_rates=None):
        """The settings of tollgate.Client (see its class docstring and Operations.__init__)."""
        super().__init__(address, token=token, token_file=token_file, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                         server_name=server_name, timeout=timeout, retries=retries, client_name=client_name, account=account,
                         member=member, fail=fail, offline_allowance=offline_allowance, offline_rates=offline_rates)
        self._connect_lock = threading.Lock()

    # ---- plumbing ------------------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._closed = True
        with self._connect_lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    @property
    def server(self):
        """The server's HELLO answer: server_name, max_in_flight, identity, role, …"""
        return self._connected(time.monotonic() + self.timeout).info

    def _connected(self, deadline):
        connection = self._connection
        if connection is not None and connection.alive:
            return connection
        with self._connect_lock:
            if self._closed:
                raise errors.ConnectionLost("the client is closed")
            if self._connection is None or not self._connection.alive:
                self._connection = _connect(self.host, self.port, self.context, self.server_name, self.token, self.client_name, deadline)
            return self._connection

    def _immediate(self, body):
        return body()

    def call(self, request, timeout=None):
        """Sends one request (built by tollgate.ops) and returns its Result, retrying as the
        class says; raises the status's exception. Under fail="open", a gate request that
        cannot reach the gate is decided locally (tollgate.failsafe)."""
        if self.failsafe is None:
            return self._call_online(request, timeout)
        try:
            result = self._call_online(request, timeout)
        except failsafe.UNREACHABLE as cause:
            return self.failsafe.decide(request, cause)
        self.failsafe.learn(request, result)
        if self.failsafe.pending:
            self.settle(timeout)
        return result

    def settle(self, timeout=None):
        """Sends the offline spends (fail="open") to the gate, each under its own key, until they
        are all answered or the gate is unreachable again; returns how many are left."""
        while self.failsafe is not None:
            entry = self.failsafe.next_to_settle()
            if entry is None:
                return 0
            try:
                self._call_online(entry[2], timeout)
                self.failsafe.done(entry)
            except errors.Refused as refusal:
                self.failsafe.done(entry, refusal)
            except failsafe.UNREACHABLE:
                return len(self.failsafe.pending)
        return 0

    def _call_online(self, request, timeout=None):
        deadline = self._deadline(timeout)
        if deadline <= time.monotonic():
            # Decided before connecting too, so a fresh client answers as a connected one does.
            raise errors.DeadlineExceeded("%s: the deadline passed before the request was sent" % request.name)
        attempt = 0
        while True:
            try:
                status, name, value = self._connected(deadline).round_trip(request, deadline)
                return ops.result(name, status, value, operation=request.name)
            except _Lost as lost:
                failure = errors.ConnectionLost("%s: %s" % (request.name, lost))
            except errors.ProtocolError as error:
                if not _common.retryable(error):
                    raise
                failure = error
            attempt += 1
            time.sleep(_common.retry_pause(attempt, self.retries, deadline, failure))

    def subscribe(self, after=None, account=None, timeout=None):
        """An iterator of events (alerts, depletions, recharges) on a connection of its own;
        `next_sequence` is the number the next new event will carry. Close it when done."""
        deadline = self._deadline(timeout)
        try:
            connection = _connect(self.host, self.port, self.context, self.server_name, self.token, self.client_name, deadline)
        except _Lost as lost:
            raise errors.ConnectionLost("SUBSCRIBE: %s" % lost) from None
        return EventStream(connection, ops.subscribe(after, account), deadline)


class EventStream:
    """Events from SUBSCRIBE, as an iterator; `next_sequence` is known once it is open."""

    def __init__(self, connection, request, deadline):
        self.connection = connection
        self.answers = connection.stream(request)
        try:
            first = self.answers.get(timeout=max(0.001, deadline - time.monotonic()))
        except queue.Empty:
            connection.close()
            raise errors.DeadlineExceeded("SUBSCRIBE: no answer within the deadline") from None
        if first is None:
            raise errors.ConnectionLost("SUBSCRIBE: %s" % connection.failure)
        try:
            self.next_sequence = ops.result(first[1], first[0], first[2], operation="SUBSCRIBE").next_sequence
        except errors.TollgateError:
            connection.close()
            raise

    def __iter__(self):
        return self

    def next(self, timeout=None):
        """The next event; None if none came within `timeout` seconds."""
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            return None
        if answer is None:
            raise StopIteration
        status, name, value = answer
        return ops.result(name, status, value, operation="SUBSCRIBE")

    def __next__(self):
        return self.next()

    def close(self):
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
