"""The outbox's view of the DMP, over `drimbox.dmp.client.DmpClient`."""

from __future__ import annotations

from drimbox.config import Config
from drimbox.source.outbox import DmpPort


def dmp_port(config: Config) -> DmpPort | None:
    """None when no DMP is configured: jobs then wait, with the reason shown to the operator."""
    if not config.dmp.base_url:
        return None
    raise NotImplementedError("DMP client not wired yet")
