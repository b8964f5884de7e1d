"""DICOM with wrong lengths sent to the box's C-STORE SCP: refused with a failure status, the SCP
keeps serving."""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from drimbox.db import Database
from drimbox.dicom.scp import StoreScp
from drimbox.source.iocm import IocmStoreHandler
from support.node import node_config

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def rejection_note(path: Path) -> bytes:
    note = Dataset()
    note.SOPClassUID = KOS
    note.SOPInstanceUID = generate_uid()
    note.StudyInstanceUID = "1.2.250.1.999.5"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "113001", "DCM"
    title.CodeMeaning = "Rejected for Quality Reasons"
    note.ConceptNameCodeSequence = Sequence([title])
    note.PatientName = "PAT^TEST"
    note.file_meta = FileMetaDataset()
    note.file_meta.MediaStorageSOPClassUID = KOS
    note.file_meta.MediaStorageSOPInstanceUID = note.SOPInstanceUID
    note.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    note.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_wrong_lengths_are_refused_and_the_scp_survives(tmp_path: Path) -> None:
    config = node_config(tmp_path, None)
    db = Database(config.store.database_url)
    db.upgrade()
    scp = StoreScp("DRIMBOX", "127.0.0.1", 0)
    scp.add_handler(IocmStoreHandler(db))
    scp.start()
    try:
        good = tmp_path / "good.dcm"
        data = bytearray(rejection_note(good))
        # PatientName's length (explicit VR LE, 2-byte length after "PN") made far too large.
        name = data.find(b"PN", data.find(b"\x10\x00\x10\x00"))
        data[name + 2 : name + 4] = (0xFFF0).to_bytes(2, "little")
        bad = tmp_path / "bad.dcm"
        bad.write_bytes(bytes(data))
        ae = AE(ae_title="PACS")
        ae.add_requested_context(KOS, ExplicitVRLittleEndian)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", scp.bound_port, ae_title="DRIMBOX")
        assert assoc.is_established
        status = assoc.send_c_store(bad)  # the file's bytes as they are, wrong length included
        assert status.Status != 0x0000  # refused, with a failure status
        echo = assoc.send_c_echo()
        assert echo.Status == 0x0000  # the same association still works
        assoc.release()
        # A new association: the SCP is still serving.
        again = ae.associate("127.0.0.1", scp.bound_port, ae_title="DRIMBOX")
        assert again.is_established and again.send_c_echo().Status == 0x0000
        again.release()
    finally:
        scp.stop()
        db.dispose()
