"""systemd's notify protocol (READY=1, STATUS=, WATCHDOG=1, STOPPING=1), stdlib only.

A no-op unless systemd started us with ``NOTIFY_SOCKET`` set, so the daemons
call it unconditionally.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        # Pet the watchdog at twice the rate systemd requires.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._next_pet = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            pass  # systemd gone or socket full: never let supervision break the daemon

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def pet(self, now: float | None = None) -> None:
        """Called from the main loop: a hung loop stops petting and systemd restarts us."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_pet:
            self.send("WATCHDOG=1")
            self._next_pet = now + self.watchdog_interval
