"""The tables. Every schema change gets an Alembic revision in `migrations/versions/`."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ReportState(enum.StrEnum):
    """Where a received report stands in the Source pipeline."""

    RECEIVED = "received"  # stored and ACKed, waiting for the pipeline
    WAITING_IMAGES = "waiting_images"  # the PACS does not hold the study yet: retried
    KOS_BUILT = "kos_built"  # manifest built from the PACS, ready for publication
    REFUSED = "refused"  # never published: identity mismatch, study never arrived…
    WITHDRAWAL_RECEIVED = "withdrawal_received"  # depublication stored, waiting for its job
    PUBLISHING = "publishing"  # a publication job is queued or retrying
    PUBLISHED = "published"  # the KOS is registered in the DMP (Approved)
    PARKED = "parked"  # the DMP refused the submission for good: needs a person
    REPLACED = "replaced"  # a newer version of the report replaced this KOS (RPLC)
    WITHDRAWN = "withdrawn"  # the KOS was deleted from the DMP (depublication, IOCM)
    APPLIED = "applied"  # a withdrawal message whose deletion was carried out
    NOT_FOR_DMP = "not_for_dmp"  # DESTDMP=N: KOS built, never sent; the viewer link still works
    SUPERSEDED = "superseded"  # an older version received after a newer one: never published


class JobState(enum.StrEnum):
    """A DMP job in the outbox."""

    QUEUED = "queued"
    RETRYING = "retrying"  # the last attempt failed in a way worth retrying
    DONE = "done"
    PARKED = "parked"  # the DMP will never accept it as it is; `drimbox reports retry` re-queues


class Hl7Message(Base):
    """Every inbound HL7 message, accepted or not, as received: nothing is dropped silently."""

    __tablename__ = "hl7_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    peer: Mapped[str] = mapped_column(String(128), default="")
    control_id: Mapped[str] = mapped_column(String(199), default="")
    message_type: Mapped[str] = mapped_column(String(32), default="")
    size_bytes: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    ack_code: Mapped[str] = mapped_column(String(2))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Report(Base):
    """One accepted report message (a report version, an update or a withdrawal)."""

    __tablename__ = "reports"
    __table_args__ = (
        Index("ix_reports_state_next", "state", "next_attempt_at"),
        Index("ix_reports_study", "study_uid"),
        Index("ix_reports_patient", "patient_ins"),
        Index("ix_reports_recheck", "recheck_at"),
        # One row per report version whichever node received it (two nodes, one re-send).
        Index("uq_reports_version_key", "version_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # None for reports the box re-opens itself (IOCM rejection notes from the PACS).
    message_id: Mapped[int | None] = mapped_column(ForeignKey("hl7_messages.id"), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # publish, update, withdraw, withdraw_exam, iocm, exam_update, recheck, confidentiality
    kind: Mapped[str] = mapped_column(String(16))
    patient_ins: Mapped[str] = mapped_column(String(32), default="")
    patient_ins_oid: Mapped[str] = mapped_column(String(64), default="")
    patient_ipp: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    accession: Mapped[str] = mapped_column(String(64), default="")
    document_id: Mapped[str] = mapped_column(String(128), default="")
    set_id: Mapped[str] = mapped_column(String(128), default="")
    version_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # ClinicalDocument/effectiveTime: with the version, orders the versions of a report.
    document_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replaced_document_id: Mapped[str] = mapped_column(String(128), default="")
    # "kind|document id" for a report version received from the RIS; None for rows the box
    # creates itself (IOCM) and for duplicates stored before the constraint existed.
    version_key: Mapped[str | None] = mapped_column(String(160), nullable=True)
    flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cda: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    state: Mapped[str] = mapped_column(String(32), default=ReportState.RECEIVED.value)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # node name
    kos_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kos: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    kos_instance_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dmp_entry_uuid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Late images: when the PACS is next compared with the published KOS, and how many of the
    # configured checks are done.
    recheck_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rechecks_done: Mapped[int] = mapped_column(Integer, default=0)


class DmpJob(Base):
    """The outbox: one job per (report, action), so that a job is never done twice."""

    __tablename__ = "dmp_jobs"
    __table_args__ = (
        UniqueConstraint("report_id", "action", name="uq_dmp_jobs_report_action"),
        Index("ix_dmp_jobs_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"))
    action: Mapped[str] = mapped_column(String(16))  # publish, delete
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # node name
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    entry_uuid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """The audit trail: who did what to which patient's data, when, with what result.

    Append-only: the migration installs triggers that refuse UPDATE and DELETE.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_patient", "patient_ins"),
        Index("ix_audit_actor", "actor"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))  # RPPS / PSC SubjectNameID, peer DN, "système"
    actor_role: Mapped[str] = mapped_column(String(32))  # user, peer, system, operator
    action: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(16))  # ok, refused, error
    patient_ins: Mapped[str] = mapped_column(String(32), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote: Mapped[str] = mapped_column(String(128), default="")
    node: Mapped[str] = mapped_column(String(64), default="")  # the node that recorded it
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LoginRequestRow(Base):
    """A Pro Santé Connect login under way: consumed once, at the callback."""

    __tablename__ = "login_requests"

    state: Mapped[str] = mapped_column(String(128), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str | None] = mapped_column(String(128), nullable=True)
    return_to: Mapped[str] = mapped_column(Text, default="/")
    browser_hash: Mapped[str] = mapped_column(String(64))  # binds the callback to the browser
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UserSession(Base):
    """A signed-in user. The cookie holds a random id; only its SHA-256 is stored here, and the
    PSC tokens are encrypted (AES-GCM) with the node's secret key."""

    __tablename__ = "user_sessions"
    __table_args__ = (Index("ix_user_sessions_subject", "subject_name_id"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255))  # PSC `sub`
    subject_name_id: Mapped[str] = mapped_column(String(64))  # RPPS-like SubjectNameID
    display_name: Mapped[str] = mapped_column(String(255), default="")
    userinfo: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    situation_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tokens: Mapped[bytes] = mapped_column(LargeBinary)  # encrypted JSON
    access_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    studies: Mapped[list[str]] = mapped_column(JSON, default=list)  # granted to this session
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoLaunch(Base):
    """A contextual launch of the Conso (the RIS/DPI form), kept until it expires.

    `id` is the unguessable value of the launch URL. Until `open_by` a signed-in user may open
    it; the first one to do so binds it to their session (`session_hash`, the SHA-256 of the
    session cookie, as `user_sessions.id_hash`) and only that session sees it afterwards, until
    `expires_at`. `context` holds the validated form (`LaunchContext`) as JSON."""

    __tablename__ = "conso_launches"
    __table_args__ = (Index("ix_conso_launches_session", "session_hash"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    open_by: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    session_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    patient_ins: Mapped[str] = mapped_column(String(32), default="")
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    history_loaded_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # Shown above the history (French): why it may be incomplete (DMP unreachable).
    history_notice: Mapped[str] = mapped_column(Text, default="")


class ConsoExam(Base):
    """One row of a launch's exam history, as the DMP gave it to the signed-in user: the KOS
    (what the viewer may show and where the images are), the report, and the row's display
    fields (`summary`: date, modalities, regions, description, site, warnings)."""

    __tablename__ = "conso_exams"
    __table_args__ = (
        Index("ix_conso_exams_launch", "launch_id"),
        Index("ix_conso_exams_study", "study_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    launch_id: Mapped[str] = mapped_column(ForeignKey("conso_launches.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    accession: Mapped[str] = mapped_column(String(64), default="")
    kos_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kos: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    report: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConsoImportedKos(Base):
    """A KOS pre-integrated into the Conso by `drimbox xdm import` (homologation scenarios):
    listed in the history of its patient (by INS) beside what the DMP returns, and without
    the DMP when it cannot be reached. `report` is the CDA it was published with."""

    __tablename__ = "conso_imported_kos"
    __table_args__ = (Index("ix_conso_imported_kos_ins", "patient_ins"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kos_sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_ins: Mapped[str] = mapped_column(String(32))
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    kos: Mapped[bytes] = mapped_column(LargeBinary)
    report: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    origin: Mapped[str] = mapped_column(Text, default="")  # the archive's file name
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SpeedTest(Base):
    """One run of `drimbox pacs speedtest` / `drimbox peer speedtest`, kept for the console's
    status page (the last results, and a drop against the previous one). No patient data: the
    study UID only."""

    __tablename__ = "speed_tests"
    __table_args__ = (Index("ix_speed_tests_target", "kind", "target", "mode", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))  # pacs, peer
    target: Mapped[str] = mapped_column(String(255))  # PACS label, peer host
    mode: Mapped[str] = mapped_column(String(16))  # c-get, c-move, wado-rs
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    images: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    first_image_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    transfer_syntaxes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    flag: Mapped[str] = mapped_column(Text, default="")  # far below the previous result: why


class LaunchStat(Base):
    """One contextual launch, accepted or refused: a row of the ANS statistics model
    ("ModelStat", `Nombre_Appel` = 1). Holds no patient data: the figures are aggregated and
    sent out of the site, the audit trail keeps who and which patient."""

    __tablename__ = "launch_stats"
    __table_args__ = (Index("ix_launch_stats_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    node: Mapped[str] = mapped_column(String(64), default="")
    ok: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text, default="")  # why the launch was refused


class UserPreference(Base):
    """A professional's display choices on the Conso, kept across sessions and nodes, keyed by
    the PSC SubjectNameID. `all_traits`: show every INS identity trait (matricule, its nature,
    every birth given name, used name and given name), not only the five shown by default
    (INS/va1.36)."""

    __tablename__ = "user_preferences"

    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    all_traits: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PeriodicJob(Base):
    """A job every node runs in turn (the retention purge): one row per job, leased like a
    report (`drimbox.db.leases`), so that one node at a time does it and a dead node's turn
    passes to another after its lease. `state` is always "scheduled"; `next_attempt_at` says
    when it is next due (or, while leased, until when the lease holds)."""

    __tablename__ = "periodic_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_run_by: Mapped[str] = mapped_column(String(64), default="")
    last_result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # counts by kind
