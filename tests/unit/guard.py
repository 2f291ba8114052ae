"""The unit tier's promise, checked: no socket, no subprocess.

`install` replaces every way the standard library opens a socket, resolves a host name or
starts a process with one that records the attempt and raises TierViolation; the unit tier's
conftest installs it around every test, and fails a test that tried, even if the code under
test caught the error."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest


class TierViolation(BaseException):
    """A BaseException, so that no `except Exception` in the code under test swallows it."""


@dataclass
class Guard:
    violations: list[str] = field(default_factory=list)

    def refuse(self, what: str) -> NoReturn:
        self.violations.append(what)
        raise TierViolation(
            f"a unit test may not {what}: "
            "a test that needs it belongs in tests/integration or tests/system"
        )


_SOCKET_CALLS = ("connect", "connect_ex", "bind")
_PROCESS_CALLS = ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp")
# Caught by the socket and Popen guards anyway; refused here first, with a plainer message.
_LOOP_CALLS = {
    "create_connection": "open a connection",
    "create_server": "listen on a socket",
    "create_datagram_endpoint": "open a datagram socket",
    "subprocess_exec": "start a subprocess",
    "subprocess_shell": "start a subprocess",
}


def install(guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    original_init = socket.socket.__init__

    def socket_init(
        self: socket.socket, family: Any = -1, type: Any = -1, proto: int = -1, fileno: Any = None
    ) -> None:
        # A socket wrapped around a file descriptor that already exists (socket.socketpair,
        # as every asyncio event loop makes one for itself) opens nothing new.
        if fileno is None:
            guard.refuse("open a socket")
        original_init(self, family, type, proto, fileno)

    monkeypatch.setattr(socket.socket, "__init__", socket_init)
    for name in _SOCKET_CALLS:
        monkeypatch.setattr(socket.socket, name, _refusing(guard, f"{name} a socket"))
    monkeypatch.setattr(socket, "getaddrinfo", _refusing(guard, "resolve a host name"))
    monkeypatch.setattr(socket, "create_connection", _refusing(guard, "open a connection"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refusing(guard, "start a subprocess"))
    for name in _PROCESS_CALLS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refusing(guard, f"start a process (os.{name})"))
    for name, what in _LOOP_CALLS.items():
        monkeypatch.setattr(asyncio.BaseEventLoop, name, _refusing_async(guard, what))


def _refusing(guard: Guard, what: str) -> Any:
    def refused(*args: object, **kwargs: object) -> NoReturn:
        guard.refuse(what)

    return refused


def _refusing_async(guard: Guard, what: str) -> Any:
    async def refused(*args: object, **kwargs: object) -> NoReturn:
        guard.refuse(what)

    return refused
