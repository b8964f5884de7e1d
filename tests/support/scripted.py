"""A scripted PACS: a pynetdicom SCP on loopback answering one DIMSE service with a test's
handler, for what Orthanc never does (odd answers, aborts, failure statuses); and a call
counter for the tests that check which path took an exchange."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

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


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Wraps `owner.name` for the test: the list gets an item per call (the lean paths' tests
    check which path took a retrieval)."""
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def ct_instance(study: str, number: int, size: int) -> Dataset:
    """A minimal CT instance of series `study`.1 with `size` bytes of pixel data (for scripted
    peers: pydicom encodes it as is, nothing checks the image)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{study}.1.{number}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".1"
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.PixelData = bytes(range(256)) * (size // 256)
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
