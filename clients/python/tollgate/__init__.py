"""Tollgate: a real-time credit gate. This package speaks its wire protocol (proto/PROTOCOL.md)."""
