"""Every frame of proto/vectors.json, decoded by a client written from proto/PROTOCOL.md alone,
has the stated meaning and encodes back to the same bytes."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tollgate import wire  # noqa: E402

VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[3] / "proto" / "vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_round_trip(vector):
    data = bytes.fromhex(vector["hex"])
    header, name, body, value = wire.decode(data, vector["direction"])
    assert wire.meaning(vector["direction"], header, name, body, value) == vector["meaning"]
    assert wire.encode(header, body, value).hex() == vector["hex"]


def test_every_request_opcode_has_a_vector():
    names = {wire.OPCODES[bytes.fromhex(v["hex"])[3]] for v in VECTORS if v["direction"] == "request"}
    assert names == set(wire.OPCODES.values()) - {"ERROR", "EVENT"}


@pytest.mark.parametrize("mutation", range(200))
def test_mutated_frames_are_rejected_or_decoded_never_crash(mutation):
    vector = VECTORS[mutation % len(VECTORS)]
    data = bytearray.fromhex(vector["hex"])
    data[mutation % len(data)] ^= 1 << (mutation % 8)
    try:
        wire.decode(bytes(data), vector["direction"])
    except (wire.Malformed, UnicodeDecodeError, IndexError, KeyError, ValueError):
        pass
