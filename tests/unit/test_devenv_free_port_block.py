"""free_port_block: a block of consecutive free ports (a gateway's workers bind metrics_port
plus their index; one taken port in the block kept a worker restarting in CI)."""

from __future__ import annotations

import socket

from modelseal_devenv.common import LOOPBACK, free_port_block


def test_every_port_of_the_block_can_be_bound_and_none_is_avoided() -> None:
    avoid: set[int] = set()
    for _ in range(20):
        base = free_port_block(3, avoid=avoid)
        block = range(base, base + 3)
        assert not avoid.intersection(block)
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in block]
        try:
            for sock, port in zip(sockets, block, strict=True):
                sock.bind((LOOPBACK, port))
        finally:
            for sock in sockets:
                sock.close()
        avoid.update(block)


def test_a_taken_port_is_never_inside_the_block() -> None:
    held = []
    try:
        for _ in range(30):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            held.append(sock)
        taken = {int(s.getsockname()[1]) for s in held}
        for _ in range(20):
            base = free_port_block(4)
            assert not taken.intersection(range(base, base + 4))
    finally:
        for sock in held:
            sock.close()
