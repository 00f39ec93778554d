"""The asyncio client: the same operations as tollgate.Client, as coroutines, pipelined over
one connection shared by every task."""

import asyncio
import time

from . import _common, errors, failsafe, ops
from .gate import AsyncHold


class _Lost(Exception):
    pass


class _Connection:
    def __init__(self, reader, writer, info):
        self.reader, self.writer, self.info = reader, writer, info
        self.pending = {}  # request id -> Future, or asyncio.Queue for streams
        self.next_id = 1
        self.in_flight = asyncio.Semaphore(max(1, info["max_in_flight"]))
        self.failure = None
        self.task = asyncio.ensure_future(self._read_loop())

    @property
    def alive(self):
        return self.failure is None

    async def _read_loop(self):
        try:
            while True:
                opcode, status, request_id, length = _common.parse_header(await self.reader.readexactly(_common.HEADER_SIZE))
                name, value = _common.decode_body(opcode, status, await self.reader.readexactly(length) if length else b"")
                waiter = self.pending.get(request_id)
                if waiter is None:
                    if request_id == 0 and status >= 100:
                        raise _Lost("the server ended the connection: %s" % errors.BY_STATUS.get(status, errors.ProtocolError).__name__)
                    continue
                if isinstance(waiter, asyncio.Queue):
                    waiter.put_nowait((status, name, value))
                else:
                    del self.pending[request_id]
                    if not waiter.done():
                        waiter.set_result((status, name, value))
        except asyncio.CancelledError:
            self._fail(_Lost("closed by the client"))
            raise
        except asyncio.IncompleteReadError:
            self._fail(_Lost("the server closed the connection"))
        except Exception as error:  # noqa: BLE001
            self._fail(error if isinstance(error, _Lost) else _Lost("connection failed: %s" % error))

    def _fail(self, error):
        if self.failure is None:
            self.failure = error
        waiters, self.pending = list(self.pending.values()), {}
        for waiter in waiters:
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(None)
            elif not waiter.done():
                waiter.set_exception(error)
        self.writer.close()

    def close(self):
        self.task.cancel()
        self._fail(_Lost("closed by the client"))

    def _register(self, waiter):
        if self.failure is not None:
            raise self.failure
        request_id, self.next_id = _common.next_request_id(self.pending, self.next_id)
        self.pending[request_id] = waiter
        return request_id

    def _send(self, data):
        try:
            self.writer.write(data)
        except (OSError, RuntimeError) as error:
            self._fail(_Lost("send failed: %s" % error))
            raise self.failure from error

    async def round_trip(self, request, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # nothing sent, so nothing applied: safe to retry
            raise errors.DeadlineExceeded("%s: the deadline passed before the request was sent" % request.name)
        if self.in_flight.locked():
            try:
                await asyncio.wait_for(self.in_flight.acquire(), remaining)
            except asyncio.TimeoutError:
                raise errors.DeadlineExceeded("%s: %d requests already in flight on the connection" % (request.name, self.info["max_in_flight"])) from None
        else:
            await self.in_flight.acquire()  # free: taken at once
        try:
            future = asyncio.get_running_loop().create_future()
            request_id = self._register(future)
            self._send(_common.frame(request.name, request_id, request.body()))
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.pending.pop(request_id, None)
                raise errors.DeadlineExceeded("%s: no answer within the deadline" % request.name) from None
        finally:
            self.in_flight.release()

    def stream(self, request):
        answers = asyncio.Queue()
        request_id = self._register(answers)
        self._send(_common.frame(request.name, request_id, request.body()))
        return answers


async def _connect(host, port, context, server_name, token, client_name, deadline):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=(server_name or host) if context else None),
            max(0.001, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise errors.DeadlineExceeded("connecting to %s:%d took longer than the deadline" % (host, port)) from None
    except OSError as error:
        if context is not None and "SSL" in type(error).__name__.upper():
            raise errors.ConnectionLost("TLS handshake with %s:%d failed: %s" % (host, port, error)) from error
        raise _Lost("cannot connect to %s:%d: %s" % (host, port, error)) from error
    try:
        import socket
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(_common.hello_request(client_name, token))
        header = await asyncio.wait_for(reader.readexactly(_common.HEADER_SIZE), max(0.001, deadline - time.monotonic()))
        opcode, status, _, length = _common.parse_header(header)
        name, value = _common.decode_body(opcode, status, await reader.readexactly(length) if length else b"")
        return _Connection(reader, writer, _common.hello_result(status, value))
    except asyncio.TimeoutError:
        writer.close()
        raise errors.DeadlineExceeded("the handshake with %s:%d took longer than the deadline" % (host, port)) from None
    except (asyncio.IncompleteReadError, OSError) as error:
        writer.close()
        raise _Lost("the handshake with %s:%d failed: %s" % (host, port, error)) from error
    except errors.TollgateError:
        writer.close()
        raise


class AsyncClient(_common.Operations):
    """The asyncio client. Same arguments, methods and guarantees as tollgate.Client; every
    call is a coroutine, `hold()` is an async context manager, and `gated()` decorates
    async tool functions.

        gate = tollgate.AsyncClient("127.0.0.1:7400", token="…", account="acme", member="alice")
        await gate.spend("web_search")
    """

    is_async = True

    hold_class = AsyncHold

    def __init__(self, address=None, *, token=None, token_file=None, tls=False, ca_file=None, cert_file=None,
                 key_file=None, server_name=None, timeout=5.0, retries=3, client_name="tollgate-python", account=None, member=None,
                 fail="closed", offline_allowance=None, offline_rates=None):
        """The settings of tollgate.AsyncClient (see its class docstring and Operations.__init__)."""
        super().__init__(address, token=token, token_file=token_file, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                         server_name=server_name, timeout=timeout, retries=retries, client_name=client_name, account=account,
                         member=member, fail=fail, offline_allowance=offline_allowance, offline_rates=offline_rates)
        self._connecting = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def server(self):
        return (await self._connected(time.monotonic() + self.timeout)).info

    async def _connected(self, deadline):
        connection = self._connection
        if connection is not None and connection.alive:
            return connection
        if self._closed:
            raise errors.ConnectionLost("the client is closed")
        if self._connecting is None:
            # One connection attempt at a time; every task waiting for it shares the outcome.
            self._connecting = asyncio.ensure_future(
                _connect(self.host, self.port, self.context, self.server_name, self.token, self.client_name, deadline))
        connecting = self._connecting
        try:
            self._connection = await asyncio.shield(connecting)
            return self._connection
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _immediate(self, body):
        return body()

    async def call(self, request, timeout=None):
        """As Client.call, awaited."""
        if self.failsafe is None:
            return await self._call_online(request, timeout)
        try:
            result = await self._call_online(request, timeout)
        except failsafe.UNREACHABLE as cause:
            return self.failsafe.decide(request, cause)
        self.failsafe.learn(request, result)
        if self.failsafe.pending:
            await self.settle(timeout)
        return result

    async def settle(self, timeout=None):
        """As Client.settle, awaited."""
        while self.failsafe is not None:
            entry = self.failsafe.next_to_settle()
            if entry is None:
                return 0
            try:
                await self._call_online(entry[2], timeout)
                self.failsafe.done(entry)
            except errors.Refused as refusal:
                self.failsafe.done(entry, refusal)
            except failsafe.UNREACHABLE:
                return len(self.failsafe.pending)
        return 0

    async def _call_online(self, request, timeout=None):
        deadline = self._deadline(timeout)
        if deadline <= time.monotonic():
            # Decided before connecting too, so a fresh client answers as a connected one does.
            raise errors.DeadlineExceeded("%s: the deadline passed before the request was sent" % request.name)
        attempt = 0
        while True:
            try:
                connection = await self._connected(deadline)
                status, name, value = await connection.round_trip(request, deadline)
                return ops.result(name, status, value, operation=request.name)
            except _Lost as lost:
                failure = errors.ConnectionLost("%s: %s" % (request.name, lost))
            except errors.ProtocolError as error:
                if not _common.retryable(error):
                    raise
                failure = error
            attempt += 1
            await asyncio.sleep(_common.retry_pause(attempt, self.retries, deadline, failure))

    async def subscribe(self, after=None, account=None, timeout=None):
        """An async iterator of events on a connection of its own."""
        deadline = self._deadline(timeout)
        try:
            connection = await _connect(self.host, self.port, self.context, self.server_name, self.token, self.client_name, deadline)
        except _Lost as lost:
            raise errors.ConnectionLost("SUBSCRIBE: %s" % lost) from None
        stream = AsyncEventStream(connection)
        await stream._open(ops.subscribe(after, account), deadline)
        return stream


class AsyncEventStream:
    def __init__(self, connection):
        self.connection = connection
        self.next_sequence = None

    async def _open(self, request, deadline):
        self.answers = self.connection.stream(request)
        try:
            first = await asyncio.wait_for(self.answers.get(), max(0.001, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self.connection.close()
            raise errors.DeadlineExceeded("SUBSCRIBE: no answer within the deadline") from None
        if first is None:
            raise errors.ConnectionLost("SUBSCRIBE: %s" % self.connection.failure)
        try:
            self.next_sequence = ops.result(first[1], first[0], first[2], operation="SUBSCRIBE").next_sequence
        except errors.TollgateError:
            self.connection.close()
            raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        answer = await self.answers.get()
        if answer is None:
            raise StopAsyncIteration
        status, name, value = answer
        return ops.result(name, status, value, operation="SUBSCRIBE")

    def close(self):
        self.connection.close()
