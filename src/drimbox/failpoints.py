"""Failpoints: named places where a test can make the process die, to prove crash safety.

`failpoint("publish:after-send")` does nothing unless the environment variable
`DRIMBOX_FAILPOINTS` names it (comma-separated); then the process sends itself SIGKILL, exactly
as a power cut or the OOM killer would. Production configurations never set the variable.
"""

from __future__ import annotations

import os
import signal

ENV = "DRIMBOX_FAILPOINTS"


def failpoint(name: str) -> None:
    armed = os.environ.get(ENV, "")
    if armed and name in {part.strip() for part in armed.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)
