"""What the blocking and the asyncio client share: settings, TLS, frames, retry policy."""

import os
import ssl

from . import errors, ops, wire

DEFAULT_ADDRESS = "127.0.0.1:7400"
PROTOCOL_VERSION = 1
ROLES = {1: "read", 2: "gate", 3: "admin"}


def parse_address(address):
    if isinstance(address, tuple):
        return address[0], int(address[1])
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("address is HOST:PORT, e.g. 127.0.0.1:7400, not %r" % (address,))
    return host.strip("[]"), int(port)


def resolve_token(token, token_file):
    """The token: given, or from a file, or TOLLGATE_TOKEN / TOLLGATE_TOKEN_FILE, or the admin
    token a local tollgated wrote to ./tollgate-data/admin.token (as the CLI does); else none."""
    if token:
        return token
    path = token_file or os.environ.get("TOLLGATE_TOKEN_FILE")
    if not path and os.environ.get("TOLLGATE_TOKEN"):
        return os.environ["TOLLGATE_TOKEN"]
    if not path and os.path.exists(os.path.join("tollgate-data", "admin.token")):
        path = os.path.join("tollgate-data", "admin.token")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return ""


def tls_context(tls, ca_file, cert_file, key_file):
    """An SSLContext for TLS (and mTLS with a client certificate), or None for plaintext."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not (tls or ca_file or cert_file):
        return None
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def frame(opcode_name, request_id, body):
    return wire.HEADER.pack(wire.MAGIC, 1, wire.OPCODE_BY_NAME[opcode_name], 0, 0, request_id, len(body)) + body


def parse_header(data):
    magic, version, opcode, flags, status, request_id, length = wire.HEADER.unpack(data)
    if magic != wire.MAGIC or version != 1 or not flags & wire.RESPONSE_FLAG:
        raise wire.Malformed("bad response header")
    return opcode, status, request_id, length


def decode_body(opcode, status, body):
    """(opcode name, decoded value) of a response body."""
    name = wire.OPCODES.get(opcode)
    if name is None:
        raise wire.Malformed("unknown opcode %d" % opcode)
    reader = wire.Reader(body)
    value = wire.response_body(name, status).read(reader)
    reader.done()
    return name, value


def hello_request(client_name, token):
    writer = wire.Writer()
    wire.write_fields(wire.REQUESTS["HELLO"], writer,
                      [("minVersion", PROTOCOL_VERSION), ("maxVersion", PROTOCOL_VERSION), ("clientName", client_name), ("token", token)])
    return frame("HELLO", 1, writer.bytes())


def hello_result(status, value):
    """The server's HELLO answer as a Result (max_in_flight, identity, role, …), or raises."""
    info = ops.result("HELLO", status, value)
    info["role"] = ROLES.get(info["role"], info["role"])
    return info


def backoff(attempt):
    return min(1.0, 0.02 * (2 ** attempt))


def retryable(error):
    return isinstance(error, errors.ProtocolError) and error.status in errors.RETRYABLE


HEADER_SIZE = wire.HEADER.size
U32_MAX = (1 << 32) - 1
