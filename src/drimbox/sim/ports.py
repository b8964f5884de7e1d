"""Loopback ports for the simulators, the demo and the tests.

A port handed out here lies outside the kernel's ephemeral range. A closed port inside that
range can be taken at any time by an outgoing connection's source port — even by a client
retrying against it, which then connects to itself (TCP simultaneous open) — so a simulator
stopped to play an outage could not listen there again."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000  # well clear of the registered services people run on a workstation
ATTEMPTS = 200


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux default if unknown)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def candidate_ports() -> range:
    low, high = ephemeral_range()
    if low - LOWEST_PORT >= 1000:
        return range(LOWEST_PORT, low)
    return range(high + 1, 65536)  # an unusually wide ephemeral range: take what is above it


def is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A currently free loopback TCP port outside the ephemeral range (tiny race window between
    this check and the caller's bind: fine for tests and the demo)."""
    candidates = candidate_ports()
    for _ in range(ATTEMPTS):
        port = random.choice(candidates)
        if is_free(port):
            return port
    raise OSError(f"no free loopback port in {candidates.start}-{candidates.stop - 1}")
