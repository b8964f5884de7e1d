"""Ports handed to simulators and tests stay outside the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from drimbox.sim import ports


def test_free_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = ports.ephemeral_range()
    handed = {ports.free_port() for _ in range(50)}
    assert all(not low <= port <= high for port in handed)
    assert all(port >= ports.LOWEST_PORT for port in handed)
    assert len(handed) > 1  # not one fixed port for everyone
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", handed.pop()))


def test_a_taken_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.free_port()))
        sock.listen()
        assert not ports.is_free(sock.getsockname()[1])


def test_a_wide_ephemeral_range_leaves_the_ports_above_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("10500\t60000\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", range_file)
    assert ports.candidate_ports() == range(60001, 65536)
    assert 60001 <= ports.free_port() <= 65535


def test_an_unreadable_range_falls_back_to_linux_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert ports.ephemeral_range() == (32768, 60999)
