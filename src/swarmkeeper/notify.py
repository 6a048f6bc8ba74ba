"""The systemd notify protocol: READY, STATUS, WATCHDOG and STOPPING messages.

systemd passes ``NOTIFY_SOCKET`` (a datagram socket path, ``@`` meaning the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. Without
them every call here does nothing, so the daemon runs the same under
systemd, in a container, or by hand.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ) if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        watchdog = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        for_us = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval = (
            int(watchdog) / 1_000_000 / 2 if watchdog.isdigit() and for_us else None
        )

    def send(self, *lines: str) -> None:
        if self._address is None:
            return
        message = "\n".join(lines).encode()
        # If systemd went away or the socket is wrong, there is nobody to tell.
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendto(message, self._address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
