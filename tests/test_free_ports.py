"""The ports tests and benchmarks hand to servers that bind them later.

A cluster set-up once failed in CI with "Address already in use": twelve ports were picked
one at a time from the kernel's ephemeral range, each free when picked, and one was gone by
the time its node bound it (picked twice, or taken as an outgoing connection's source port).
"""

from __future__ import annotations

import socket
from pathlib import Path

from tokenward.gateway.embedded import free_ports


def test_ports_picked_together_are_distinct_and_bindable() -> None:
    ports = free_ports(24)
    assert len(set(ports)) == 24
    held = []
    try:
        for port in ports:
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            held.append(sock)
    finally:
        for sock in held:
            sock.close()


def test_ports_come_from_below_the_ephemeral_range() -> None:
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(1024 <= port < first_ephemeral for port in free_ports(50))


def test_a_taken_port_is_not_handed_out() -> None:
    ports = free_ports(8)
    taken = []
    try:
        for port in ports:
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            taken.append(sock)
        assert not set(free_ports(200)) & set(ports)
    finally:
        for sock in taken:
            sock.close()
