"""systemd's readiness protocol (sd_notify(3)) without a library.

Contract: `notify("READY=1")` sends one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET (a
path, or an abstract name written with a leading '@') and returns True; with no $NOTIFY_SOCKET
(not run by systemd with Type=notify) it does nothing and returns False. A socket that cannot be
reached is not an error of the service: it is reported as False, never raised.
"""

from __future__ import annotations

import os
import socket


def notify(*assignments: str) -> bool:
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):  # the abstract namespace: a leading NUL byte
        target = "\0" + target[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(assignments).encode(), target)
        return True
    except OSError:
        return False
