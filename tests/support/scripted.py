"""A scripted PACS: a pynetdicom SCP on loopback answering one DIMSE service with a test's
handler, for what Orthanc never does (odd answers, aborts, failure statuses)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE

from drimbox.dicom.pacs import PacsSettings


@contextmanager
def serving(
    ae: AE,
    event: Any,
    handler: Callable[..., Any],
    server_tls: ssl.SSLContext | None = None,
    **settings: Any,
) -> Iterator[PacsSettings]:
    """`ae` answering `event` with `handler` on a free loopback port (over TLS with
    `server_tls`), as the PACS of the settings yielded (`settings` add to or replace them)."""
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(event, handler)],
        ssl_context=server_tls,
    )
    try:
        yield PacsSettings(
            host=settings.pop("host", "127.0.0.1"),
            port=int(server.server_address[1]),
            called_aet=str(ae.ae_title),
            **settings,
        )
    finally:
        server.shutdown()
