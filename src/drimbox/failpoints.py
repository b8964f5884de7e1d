"""Failpoints: named places where a test can make the process die or stall, to prove crash
safety and what the operator sees.

`failpoint("publish:after-send")` does nothing unless the environment variable
`DRIMBOX_FAILPOINTS` names it (comma-separated); then the process sends itself SIGKILL, as the
OOM killer or `kill -9` would (not a power cut: the kernel's page cache survives, see
docs/reliability.md). `name=stall` instead blocks the calling thread for good,
as a call that never returns would (the node's other threads go on: its leases are renewed).
Production configurations never set the variable.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "DRIMBOX_FAILPOINTS"


def failpoint(name: str) -> None:
    armed = os.environ.get(ENV, "")
    if not armed:
        return
    actions = dict(part.strip().partition("=")[::2] for part in armed.split(","))
    if name not in actions:
        return
    if actions[name] == "stall":
        threading.Event().wait()
    os.kill(os.getpid(), signal.SIGKILL)
