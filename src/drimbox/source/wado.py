"""The image service's HTTP routes: WADO-RS (PS3.18 §10.4), its metadata, frames, renderings
and thumbnails, and the QIDO-RS queries a viewer needs, for one access policy.

Mounted twice by `drimbox.web.app`: under `/dicom-web-rs` for peers (bearer token +
`KOS-SOPInstanceUID`, the DRIM-M flavour) and under `/dicom-web` on the viewer origin (session
cookie). Either way an `Authorizer` turns the request into the KOS content the caller may read;
the routes then only ever serve instances that KOS references. Responses stream: the status is
sent once the first instance is in the cache, then each part as its instance arrives (packed
into writes of up to 1 MB while the PACS is fast, each part closed by the next delimiter so a
reader holds it complete at once, written through `drimbox.http.rawbody`). Errors
are PS3.18 statuses with a French JSON body (400, 401, 403, 404, 406, 503 + Retry-After),
never 500 for a PACS or client problem. Every retrieval is recorded (`drimbox.source.access`).
It must not open DICOM associations (the `ImageService` does) nor know how tokens are checked.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset

from drimbox.auth.tokens import InvalidToken, TokenIdentity, TokenVerifier, bearer_token
from drimbox.db import Database, utcnow
from drimbox.dicom.cache import CachedInstance, CacheEntry, CacheError
from drimbox.dicom.model import is_uid
from drimbox.dicom.pacs import PacsError
from drimbox.dicom.retrieve import ImageService
from drimbox.dicom.transcode import (
    PRODUCIBLE_SYNTAXES,
    TranscodeError,
    extract_frames,
    frame_media_type,
    ranked_syntaxes,
    render,
    transcode,
    uniform_syntax,
)
from drimbox.http.accept import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    AcceptError,
    MediaRange,
    SyntaxAcceptance,
    accepts_media_type,
    parse_accept,
    syntax_acceptance,
)
from drimbox.http.accesslog import note_user
from drimbox.http.multipart import (
    BODY_END,
    closing,
    new_boundary,
    part_end,
    part_header,
    part_open,
)
from drimbox.http.rawbody import BodyChunk, Framable, RawStreamingResponse
from drimbox.source.access import RetrievalRecord, record_retrieval
from drimbox.source.grants import GrantError, Grants, KosContent
from drimbox.trust import audit
from drimbox.trust.tally import AccessKey, AccessTally, minute_of, patient_of_study
from drimbox.trust.tls import PeerCheck, PeerRefused, peer_certificate_from_scope

log = logging.getLogger(__name__)

KOS_HEADER = "KOS-SOPInstanceUID"
DICOM_JSON = "application/dicom+json"
RETRY_AFTER_S = 30
THUMBNAIL_SIZE = 128
_METADATA_BULK_THRESHOLD = 64 * 1024
MAX_FRAMES = 1024  # distinct frames per request: more than any viewer asks at once
CHUNK_BYTES = 1024 * 1024  # a response write: big enough to amortise, small enough to stream
# Instances re-encoded at once by the node, all responses together: its cores (dcmcjpeg runs as
# a process, the other codecs release the GIL in C). Each response keeps LOOKAHEAD re-encodings
# queued so that the workers stay busy while the parts before them are being sent.
TRANSCODE_WORKERS = max(1, os.cpu_count() or 1)
LOOKAHEAD = 4 * TRANSCODE_WORKERS
_TRANSCODE_POOL = ThreadPoolExecutor(TRANSCODE_WORKERS, thread_name_prefix="transcode")


class WadoError(Exception):
    """An HTTP error answer: status, French message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = message
        self.headers = headers or {}
        super().__init__(message)


@dataclass(frozen=True)
class Scope:
    """Who asks, and the KOS content they may read."""

    subject: str
    kos: KosContent
    psc_client: str = ""  # peers: the PSC client the bearer token was issued to


@dataclass(frozen=True)
class Visible:
    """Who asks, and every KOS they may list."""

    subject: str
    contents: list[KosContent]
    psc_client: str = ""


class Authorizer(Protocol):
    """One access policy (peers or viewer sessions)."""

    channel: str

    async def scope(self, request: Request, study_uid: str) -> Scope:
        """The caller's scope for one study; raises `WadoError` (401/403/404)."""
        ...

    async def visible(self, request: Request) -> Visible:
        """The caller and every KOS they may list (QIDO /studies)."""
        ...

    def caller_hint(self, request: Request) -> tuple[str, str]:
        """Best-effort (subject, PSC client) of a refused request ("" if unknown), for the
        audit trail; blocking (a token check may ask PSC)."""
        ...


class PeerAuthorizer:
    """DRIM-M peers: `Authorization: Bearer <PSC token>` and `KOS-SOPInstanceUID`."""

    channel = "peer"

    def __init__(
        self, verifier: TokenVerifier, grants: Grants, peer_check: PeerCheck | None = None
    ) -> None:
        self.verifier = verifier
        self.grants = grants
        self.peer_check = peer_check

    def _check_peer(self, request: Request) -> None:
        """Mutual TLS: the client certificate's DN must be a whitelist entry's."""
        if self.peer_check is None:
            return
        try:
            self.peer_check.check_incoming(peer_certificate_from_scope(request.scope))
        except PeerRefused as exc:
            raise WadoError(403, exc.message) from None

    def _identity(self, request: Request) -> TokenIdentity:
        try:
            return self.verifier.verify(bearer_token(request.headers.get("authorization")))
        except InvalidToken as exc:
            raise WadoError(
                401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ) from None

    def _kos_uid(self, request: Request) -> str:
        kos_uid = request.headers.get(KOS_HEADER, "").strip()
        if not kos_uid:
            raise WadoError(400, f"en-tête {KOS_HEADER} absent : l'UID du KOS publié est requis")
        if not is_uid(kos_uid):
            raise WadoError(400, f"en-tête {KOS_HEADER} invalide : UID DICOM attendu")
        return kos_uid

    async def scope(self, request: Request, study_uid: str) -> Scope:
        self._check_peer(request)
        # Token checks may call PSC (introspection): never on the event loop.
        identity = await asyncio.to_thread(self._identity, request)
        kos_uid = self._kos_uid(request)
        try:
            content = await asyncio.to_thread(self.grants.for_peer, study_uid, kos_uid)
        except GrantError as exc:
            raise WadoError(exc.status, str(exc)) from None
        return Scope(identity.subject, content, identity.client_id)

    async def visible(self, request: Request) -> Visible:
        self._check_peer(request)
        identity = await asyncio.to_thread(self._identity, request)
        kos_uid = self._kos_uid(request)
        try:
            content = await asyncio.to_thread(self.grants.kos_of_peer, kos_uid)
        except GrantError as exc:
            raise WadoError(exc.status, str(exc)) from None
        return Visible(identity.subject, [content], identity.client_id)

    def caller_hint(self, request: Request) -> tuple[str, str]:
        try:
            identity = self._identity(request)
        except WadoError:
            return "", ""
        return identity.subject, identity.client_id


def _tallied(record: RetrievalRecord) -> bool:
    """Served accesses are summed per minute (`drimbox.trust.tally`); a client that left
    mid-answer (499) still got bytes. Refusals and errors are recorded one by one."""
    return record.result < 400 or record.result == 499


def audit_refusal(db: Database, record: RetrievalRecord) -> None:
    """One audit event for a refused or failed access, with its reason."""
    audit.record(
        db,
        actor=record.subject or "inconnu",
        role="peer" if record.channel == "peer" else "user",
        action=record.action,
        result="error" if record.result >= 500 else "refused",
        patient_ins=patient_of_study(db, record.study_uid),
        study_uid=record.study_uid,
        nbytes=record.bytes,
        remote=record.client,
        series_uid=record.series_uid,
        sop_instance_uid=record.sop_instance_uid,
        psc_client=record.psc_client,
        peer_dn=record.peer_dn,
        http_status=record.result,
        channel=record.channel,
        reason=record.detail,
    )


def peer_dn(scope: Mapping[str, Any]) -> str:
    """The subject of the client certificate a request came with ("" without mutual TLS):
    the calling box, as the audit and the access log name it (an IP says little behind NAT)."""
    try:
        certificate = peer_certificate_from_scope(scope)
    except ValueError:
        return ""
    return certificate.subject.rfc4514_string() if certificate is not None else ""


def _frame_numbers(frame_list: str) -> list[int]:
    """The distinct frame numbers of a `…/frames/{list}` path, in the order asked: a number
    asked twice is answered once, and a list longer than `MAX_FRAMES` is refused (a 10 KB URL
    must not build thousands of parts)."""
    texts = frame_list.split(",")  # the URL itself is bounded by the server (h11, 16 KB)
    if not all(t.strip().isdigit() and len(t.strip()) <= 9 for t in texts):
        raise WadoError(400, "liste de trames invalide (ex. 1 ou 1,2,3)")
    numbers = list(dict.fromkeys(int(t) for t in texts))
    if any(n < 1 for n in numbers):
        raise WadoError(400, "les numéros de trame commencent à 1")
    if len(numbers) > MAX_FRAMES:
        raise WadoError(400, f"liste de trames trop longue ({MAX_FRAMES} trames au plus)")
    return numbers


def _check_uids(*uids: str) -> None:
    for uid in uids:
        if not is_uid(uid):
            raise WadoError(400, f"UID DICOM invalide : « {uid[:80]} »")


def _ranges(request: Request) -> list[MediaRange]:
    try:
        return parse_accept(request.headers.get("accept"))
    except AcceptError as exc:
        raise WadoError(400, f"en-tête Accept invalide : {exc}") from None


def _require_json(request: Request) -> None:
    ranges = _ranges(request)
    if not any(accepts_media_type(ranges, t) > 0 for t in (DICOM_JSON, "application/json")):
        raise WadoError(406, "seul application/dicom+json est produit pour cette ressource")


def _dicom_acceptance(request: Request) -> SyntaxAcceptance:
    acceptance = syntax_acceptance(_ranges(request), ("application/dicom",))
    if not acceptance.acceptable:
        raise WadoError(
            406,
            'aucun type accepté : multipart/related; type="application/dicom" attendu '
            "(syntaxes de transfert produites : " + ", ".join(PRODUCIBLE_SYNTAXES) + ", ou "
            "celle stockée)",
        )
    return acceptance


def _json_response(payload: Any) -> Response:
    return JSONResponse(payload, media_type=DICOM_JSON)


def _part_type(syntax: str) -> str:
    return f"application/dicom; transfer-syntax={syntax}"


async def _transcoded(instance: CachedInstance, ranked: Sequence[str]) -> tuple[bytes, str] | None:
    """The instance in the first of `ranked` its transcoding gives (the stored bytes when its
    own syntax comes first), None (logged) when none does; re-encoded in the node's pool."""
    errors = []
    for syntax in ranked:
        if syntax == instance.transfer_syntax:
            return await asyncio.to_thread(instance.read), syntax
        try:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(
                _TRANSCODE_POOL, _transcode_instance, instance, syntax
            )
            return data, syntax
        except TranscodeError as exc:
            errors.append(f"{syntax}: {exc}")
    log.warning("instance %s skipped: %s", instance.sop_instance_uid, "; ".join(errors))
    return None


def _ranking(acceptance: SyntaxAcceptance, pinned: str | None) -> Callable[[str], list[str]]:
    """`ranked_syntaxes` for one response, negotiated once per stored syntax rather than for
    each of a series' parts (its cost was a few % of the node's CPU on a 1300-part series)."""
    ranked: dict[str, list[str]] = {}

    def rank(stored: str) -> list[str]:
        syntaxes = ranked.get(stored)
        if syntaxes is None:
            syntaxes = ranked[stored] = ranked_syntaxes(stored, acceptance, pinned)
        return syntaxes

    return rank


def _transcode_instance(instance: CachedInstance, syntax: str) -> bytes:
    return transcode(instance.read(), syntax)


def _pack(group: Sequence[tuple[bytes, CachedInstance]], tail: bytes, size: int) -> Framable:
    """Parts (their opening, the instance's cached bytes, `tail`) laid out in one buffer."""
    chunk = Framable.allocate(size)
    buffer, position = chunk.buffer, chunk.start
    for head, instance in group:
        buffer[position : position + len(head)] = head
        position += len(head)
        instance.read_into(buffer[position : position + instance.size])
        position += instance.size
        buffer[position : position + len(tail)] = tail
        position += len(tail)
    return chunk


class WadoRoutes:
    """The routes of one mount point, bound to an `ImageService` and an `Authorizer`."""

    def __init__(
        self,
        images: ImageService,
        authorizer: Authorizer,
        *,
        access_log: Path,
        audit_db: Database | None = None,
        tally: AccessTally | None = None,
    ) -> None:
        """`tally`: the node's (both origins share one), else this mount's own."""
        self.images = images
        self.authorizer = authorizer
        self.access_log = access_log
        self.audit_db = audit_db
        self.tally = tally or (AccessTally(audit_db) if audit_db is not None else None)

    # -- plumbing ----------------------------------------------------------------------------

    def record(self, request: Request, record: RetrievalRecord) -> None:
        client = request.client.host if request.client else ""
        record = replace(
            record, channel=self.authorizer.channel, client=client, peer_dn=peer_dn(request.scope)
        )
        record_retrieval(self.access_log, record)
        note_user(request.scope, record.subject)
        if self.audit_db is None or self.tally is None:
            return
        if _tallied(record):
            self.tally.add(
                AccessKey(
                    role="peer" if record.channel == "peer" else "user",
                    actor=record.subject or "inconnu",
                    action=record.action,
                    study_uid=record.study_uid,
                    minute=minute_of(utcnow()),
                    remote=client,
                    channel=record.channel,
                    psc_client=record.psc_client,
                    peer_dn=record.peer_dn,
                ),
                nbytes=record.bytes,
                instances=record.instances,
                series_uid=record.series_uid,
                studies=record.studies,
                interrupted=record.result == 499,
            )
            return
        # Written off the event loop; the local access log above is the fallback trace if the
        # database is unavailable.
        asyncio.get_running_loop().run_in_executor(None, audit_refusal, self.audit_db, record)

    def served(
        self,
        request: Request,
        scope: Scope | Visible,
        resource: str,
        response: Response,
        *,
        study_uid: str,
        series_uid: str = "",
        sop_uid: str = "",
        instances: int = 0,
        studies: tuple[str, ...] = (),
    ) -> Response:
        """Record an answer built whole (renderings, QIDO) and return it."""
        self.record(
            request,
            RetrievalRecord(
                subject=scope.subject,
                psc_client=scope.psc_client,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid=sop_uid,
                resource=resource,
                kos_sop_uid=scope.kos.kos_sop_uid if isinstance(scope, Scope) else "",
                bytes=len(response.body),
                instances=instances,
                studies=studies,
            ),
        )
        return response

    async def _open_instances(
        self, scope: Scope, series_uid: str, only: set[str] | None = None
    ) -> tuple[CacheEntry, AsyncIterator[list[CachedInstance]]]:
        """The series' entry (pinned) and an iterator over the instances the KOS grants, in
        batches of those that are in the cache (see `CacheEntry.follow_batches`)."""
        granted = scope.kos.series.get(series_uid, {})
        wanted = set(granted) if only is None else only & set(granted)
        try:
            entry = await self.images.fetcher.open(
                scope.kos.study_uid, series_uid, scope.kos.sop_classes(series_uid)
            )
        except CacheError as exc:
            raise WadoError(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None

        async def granted_instances() -> AsyncIterator[list[CachedInstance]]:
            async for batch in entry.follow_batches(CHUNK_BYTES):
                kept = [i for i in batch if i.sop_instance_uid in wanted]
                if kept:
                    yield kept

        return entry, granted_instances()

    @staticmethod
    def _unavailable(exc: BaseException) -> WadoError:
        if isinstance(exc, PacsError | CacheError):
            return WadoError(
                503,
                f"images momentanément indisponibles : {exc}",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        log.error("retrieval failed unexpectedly", exc_info=exc)
        return WadoError(
            503, "images momentanément indisponibles", {"Retry-After": str(RETRY_AFTER_S)}
        )

    async def _first(
        self, entry: CacheEntry, batches: AsyncIterator[list[CachedInstance]]
    ) -> list[CachedInstance] | None:
        try:
            return await anext(batches, None)
        except Exception as exc:  # noqa: BLE001 (the retrieval's error, whatever it is → 503)
            raise self._unavailable(exc) from None

    # -- WADO-RS retrieve --------------------------------------------------------------------

    async def retrieve(
        self,
        request: Request,
        study_uid: str,
        series_uids: Sequence[str] | None,
        sop_uid: str | None = None,
    ) -> Response:
        """Study (`series_uids` None), series or instance retrieve, as multipart/related."""
        scope = await self.authorizer.scope(request, study_uid)
        resource = "study" if series_uids is None else ("instance" if sop_uid else "series")
        if series_uids is None:
            series_uids = list(scope.kos.series)
        for series_uid in series_uids:
            if series_uid not in scope.kos.series:
                raise WadoError(404, "série absente du KOS publié de cette étude")
        only = None
        if sop_uid is not None:
            if sop_uid not in scope.kos.series[series_uids[0]]:
                raise WadoError(404, "instance absente du KOS publié de cette étude")
            only = {sop_uid}
        acceptance = _dicom_acceptance(request)

        # Wait for the first instance before answering, so that PACS failures and empty
        # series still get a proper status; everything after it streams.
        queue = list(series_uids)
        entry, instances = await self._open_instances(scope, queue.pop(0), only)
        try:
            first = await self._first(entry, instances)
            while first is None and queue:
                self.images.cache.release(entry)
                entry, instances = await self._open_instances(scope, queue.pop(0), only)
                first = await self._first(entry, instances)
            if first is None:
                raise WadoError(404, "aucune image de cette sélection n'est dans le PACS")
            stored = first[0].transfer_syntax
            if not ranked_syntaxes(stored, acceptance):
                raise WadoError(
                    406,
                    f"syntaxe de transfert stockée {stored} non acceptée et aucune "
                    "syntaxe productible acceptée",
                )
            uniform = uniform_syntax(stored, acceptance)
        except BaseException:
            self.images.cache.release(entry)
            raise

        boundary = new_boundary()
        rank = _ranking(acceptance, uniform)
        record = RetrievalRecord(
            subject=scope.subject,
            psc_client=scope.psc_client,
            study_uid=study_uid,
            series_uid="" if resource == "study" else series_uids[0],
            sop_instance_uid=sop_uid or "",
            resource=resource,
            kos_sop_uid=scope.kos.kos_sop_uid,
        )

        async def body() -> AsyncIterator[BodyChunk]:
            nonlocal entry, instances
            sent = count = 0
            result, detail = 200, ""
            batch: list[CachedInstance] | None = first
            try:
                while True:
                    while batch is not None:
                        async for chunk, parts in self._chunks(batch, rank, boundary, count):
                            sent += len(chunk)
                            count += parts
                            yield chunk
                        batch = await anext(instances, None)
                    if not queue:
                        break
                    self.images.cache.release(entry)
                    entry, instances = await self._open_instances(scope, queue.pop(0), only)
                    batch = await anext(instances, None)
                end = BODY_END if count else b""
                sent += len(end)
                yield end
            except (asyncio.CancelledError, GeneratorExit):
                result, detail = 499, "client parti avant la fin"
                raise
            except Exception as exc:
                result, detail = 503, f"interrompu : {exc}"
                log.warning("WADO-RS stream of %s interrupted: %s", study_uid, exc)
                raise
            finally:
                self.images.cache.release(entry)
                self.record(
                    request,
                    replace(record, bytes=sent, instances=count, result=result, detail=detail),
                )

        # Every part in the first one's syntax (for a client listing what it accepts): said on
        # the response itself, as the DRIM-M sample response does.
        syntax = f"; transfer-syntax={uniform}" if uniform else ""
        return RawStreamingResponse(
            body(),
            media_type=f'multipart/related; type="application/dicom"{syntax}; boundary={boundary}',
        )

    async def _chunks(
        self,
        batch: Sequence[CachedInstance],
        rank: Callable[[str], Sequence[str]],
        boundary: str,
        index: int,
    ) -> AsyncIterator[tuple[BodyChunk, int]]:
        """The parts of `batch` (the first numbered `index`) as (chunk, number of parts), each in
        the first syntax `rank` (`_ranking`) gives that works and ended by the next delimiter
        (complete for the reader as soon as it arrives), in the batch's order: stored bytes are
        read straight into chunks of up to `CHUNK_BYTES` (few writes, one copy); instances to
        transcode are re-encoded `TRANSCODE_WORKERS` at a time (the node's cores), each sent as
        soon as it and those before it are ready."""
        group: list[tuple[bytes, CachedInstance]] = []
        size = 0
        tail = part_end(boundary)
        pending: deque[tuple[CachedInstance, asyncio.Task[tuple[bytes, str] | None] | None]]
        pending = deque()
        running = 0
        try:
            for position in range(len(batch) + 1):
                if position < len(batch):
                    instance = batch[position]
                    ranked = rank(instance.transfer_syntax)
                    if not ranked:
                        log.warning(
                            "instance %s skipped: nothing acceptable", instance.sop_instance_uid
                        )
                        continue
                    task = None
                    if ranked[0] != instance.transfer_syntax:
                        task = asyncio.create_task(_transcoded(instance, ranked))
                        running += 1
                    pending.append((instance, task))
                drain = position == len(batch)
                # Send what is at the front as soon as it can go, keeping the workers busy.
                while pending and (drain or pending[0][1] is None or running >= LOOKAHEAD):
                    front, job = pending.popleft()
                    if job is None:  # the stored bytes, untouched
                        stored = front.transfer_syntax
                        head = part_open(boundary, _part_type(stored), front.size, first=not index)
                        group.append((head, front))
                        size += len(head) + front.size + len(tail)
                        index += 1
                        if size >= CHUNK_BYTES:
                            yield _pack(group, tail, size), len(group)
                            group, size = [], 0
                        continue
                    if group:
                        yield _pack(group, tail, size), len(group)
                        group, size = [], 0
                    done = await job
                    running -= 1
                    if done is None:
                        continue
                    data, syntax = done
                    head = part_open(boundary, _part_type(syntax), len(data), first=not index)
                    index += 1
                    yield memoryview(head + data + tail), 1
        finally:
            for _, job in pending:  # the client left: the work ahead is not needed
                if job is not None:
                    job.cancel()
        if group:
            yield _pack(group, tail, size), len(group)

    # -- metadata ----------------------------------------------------------------------------

    async def metadata(
        self, request: Request, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> Response:
        scope = await self.authorizer.scope(request, study_uid)
        _require_json(request)
        series_list = [series_uid] if series_uid else list(scope.kos.series)
        for uid in series_list:
            if uid not in scope.kos.series:
                raise WadoError(404, "série absente du KOS publié de cette étude")
        if sop_uid and sop_uid not in scope.kos.series[series_list[0]]:
            raise WadoError(404, "instance absente du KOS publié de cette étude")
        items: list[dict[str, Any]] = []
        for uid in series_list:
            entry, instances = await self._open_instances(
                scope, uid, {sop_uid} if sop_uid else None
            )
            try:
                try:
                    collected = [i async for batch in instances for i in batch]
                except Exception as exc:  # noqa: BLE001 (the retrieval's error → 503)
                    raise self._unavailable(exc) from None
                items.extend(await asyncio.to_thread(_metadata_of, collected))
            finally:
                self.images.cache.release(entry)
        if not items:
            raise WadoError(404, "aucune image de cette sélection n'est dans le PACS")
        return self.served(
            request,
            scope,
            "metadata",
            _json_response(items),
            study_uid=study_uid,
            series_uid=series_uid or "",
            sop_uid=sop_uid or "",
            instances=len(items),
        )

    # -- frames and renderings ---------------------------------------------------------------

    async def _instance_bytes(self, scope: Scope, series_uid: str, sop_uid: str) -> bytes:
        if sop_uid not in scope.kos.series.get(series_uid, {}):
            raise WadoError(404, "instance absente du KOS publié de cette étude")
        entry, instances = await self._open_instances(scope, series_uid, {sop_uid})
        try:
            found = await self._first(entry, instances)
            if found is None:
                raise WadoError(404, "cette image n'est pas dans le PACS")
            return found[0].read()
        finally:
            self.images.cache.release(entry)

    async def frames(
        self, request: Request, study_uid: str, series_uid: str, sop_uid: str, frame_list: str
    ) -> Response:
        scope = await self.authorizer.scope(request, study_uid)
        numbers = _frame_numbers(frame_list)
        ranges = _ranges(request)
        data = await self._instance_bytes(scope, series_uid, sop_uid)
        stored = _transfer_syntax(data)
        acceptance = syntax_acceptance(
            ranges, (frame_media_type(stored), "application/octet-stream")
        )
        stored_ok = acceptance.accepts(stored)
        if not stored_ok and not syntax_acceptance(ranges, ("application/octet-stream",)).accepts(
            EXPLICIT_VR_LITTLE_ENDIAN
        ):
            raise WadoError(406, "aucun format de trame accepté (application/octet-stream ?)")
        try:
            frames = await asyncio.to_thread(extract_frames, data, numbers, stored_ok=stored_ok)
        except IndexError as exc:
            raise WadoError(404, str(exc)) from None
        except TranscodeError as exc:
            raise WadoError(406, str(exc)) from None
        boundary = new_boundary()
        record = RetrievalRecord(
            subject=scope.subject,
            psc_client=scope.psc_client,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_uid,
            resource="frames",
            kos_sop_uid=scope.kos.kos_sop_uid,
            instances=1,
        )

        async def parts() -> AsyncIterator[bytes]:
            # One part at a time: the answer is never assembled in memory.
            sent, result = 0, 200
            try:
                for index, frame in enumerate(frames):
                    content_type = f"{frame.media_type}; transfer-syntax={frame.transfer_syntax}"
                    head = (b"\r\n" if index else b"") + part_header(
                        boundary, content_type, len(frame.data)
                    )
                    sent += len(head)
                    yield head
                    sent += len(frame.data)
                    yield frame.data
                end = closing(boundary)
                sent += len(end)
                yield end
            except (asyncio.CancelledError, GeneratorExit):
                result = 499
                raise
            finally:
                self.record(request, replace(record, bytes=sent, result=result))

        media = frames[0].media_type
        return StreamingResponse(
            parts(), media_type=f'multipart/related; type="{media}"; boundary={boundary}'
        )

    async def rendered(
        self,
        request: Request,
        study_uid: str,
        series_uid: str | None,
        sop_uid: str | None,
        *,
        frame: int = 1,
        thumbnail: bool = False,
    ) -> Response:
        scope = await self.authorizer.scope(request, study_uid)
        ranges = _ranges(request)
        media = max(("image/jpeg", "image/png"), key=lambda t: accepts_media_type(ranges, t))
        if accepts_media_type(ranges, media) <= 0:
            raise WadoError(406, "seuls image/jpeg et image/png sont produits")
        if series_uid is None:
            series_uid = next(iter(scope.kos.series), None)
            if series_uid is None:
                raise WadoError(404, "KOS sans série")
        if series_uid not in scope.kos.series:
            raise WadoError(404, "série absente du KOS publié de cette étude")
        if sop_uid is None:
            sops = list(scope.kos.series[series_uid])
            sop_uid = sops[len(sops) // 2]  # a middle slice represents a volume best
        data = await self._instance_bytes(scope, series_uid, sop_uid)
        try:
            image = await asyncio.to_thread(
                render,
                data,
                frame=frame,
                media_type=media,
                max_size=THUMBNAIL_SIZE if thumbnail else None,
            )
        except TranscodeError as exc:
            raise WadoError(406, str(exc)) from None
        return self.served(
            request,
            scope,
            "thumbnail" if thumbnail else "rendered",
            Response(image, media_type=media),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            instances=1,
        )

    # -- QIDO-RS -----------------------------------------------------------------------------

    async def _find(
        self, function: Callable[..., list[Dataset]], *args: Any, **keys: Any
    ) -> list[Dataset]:
        try:
            return await asyncio.to_thread(function, *args, **keys)
        except PacsError as exc:
            raise self._unavailable(exc) from None

    async def search_studies(self, request: Request) -> Response:
        _require_json(request)
        caller = await self.authorizer.visible(request)
        params = request.query_params
        wanted_study = params.get("StudyInstanceUID") or params.get("0020000D")
        wanted_patient = params.get("PatientID") or params.get("00100020")
        results: list[dict[str, Any]] = []
        for kos in caller.contents:
            if wanted_study and kos.study_uid not in wanted_study.split(","):
                continue
            found = await self._find(self.images.pacs.find_studies, StudyInstanceUID=kos.study_uid)
            for ds in found:
                if wanted_patient and str(ds.get("PatientID", "")) != wanted_patient:
                    continue
                ds.NumberOfStudyRelatedSeries = len(kos.series)
                ds.NumberOfStudyRelatedInstances = kos.instance_count
                results.append(_qido_json(ds))
        offset, limit = _paging(params)
        page = results[offset : offset + limit]
        listed = tuple(
            dict.fromkeys(str(r.get("0020000D", {}).get("Value", [""])[0]) for r in page)
        )
        return self.served(
            request,
            caller,
            "search_studies",
            _json_response(page),
            study_uid=listed[0] if len(listed) == 1 else "",
            studies=listed if len(listed) > 1 else (),
        )

    async def search_series(self, request: Request, study_uid: str) -> Response:
        scope = await self.authorizer.scope(request, study_uid)
        _require_json(request)
        found = await self._find(self.images.pacs.find_series, study_uid)
        results = []
        for ds in found:
            uid = str(ds.get("SeriesInstanceUID", ""))
            if uid not in scope.kos.series:
                continue
            ds.NumberOfSeriesRelatedInstances = len(scope.kos.series[uid])
            results.append(_qido_json(ds))
        offset, limit = _paging(request.query_params)
        page = results[offset : offset + limit]
        return self.served(
            request, scope, "search_series", _json_response(page), study_uid=study_uid
        )

    async def search_instances(
        self, request: Request, study_uid: str, series_uid: str | None
    ) -> Response:
        scope = await self.authorizer.scope(request, study_uid)
        _require_json(request)
        series_list = [series_uid] if series_uid else list(scope.kos.series)
        results = []
        for uid in series_list:
            granted = scope.kos.series.get(uid)
            if granted is None:
                raise WadoError(404, "série absente du KOS publié de cette étude")
            for ds in await self._find(self.images.pacs.find_instances, study_uid, uid):
                if str(ds.get("SOPInstanceUID", "")) in granted:
                    results.append(_qido_json(ds))
        offset, limit = _paging(request.query_params)
        page = results[offset : offset + limit]
        return self.served(
            request,
            scope,
            "search_instances",
            _json_response(page),
            study_uid=study_uid,
            series_uid=series_uid or "",
            instances=len(page),
        )


def _paging(params: Any) -> tuple[int, int]:
    try:
        offset = max(0, int(params.get("offset", 0)))
        limit = max(0, min(int(params.get("limit", 1000)), 10000))
    except ValueError:
        raise WadoError(400, "offset et limit doivent être des entiers") from None
    return offset, limit


def _qido_json(ds: Dataset) -> dict[str, Any]:
    for keyword in ("QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability"):
        if keyword in ds:
            delattr(ds, keyword)
    result: dict[str, Any] = ds.to_json_dict(suppress_invalid_tags=True)
    return result


def _transfer_syntax(data: bytes) -> str:
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return str(ds.file_meta.TransferSyntaxUID)


def _metadata_of(instances: Sequence[CachedInstance]) -> list[dict[str, Any]]:
    out = []
    for instance in instances:
        ds = dcmread(BytesIO(instance.read()), stop_before_pixels=True)
        item: dict[str, Any] = ds.to_json_dict(
            bulk_data_threshold=_METADATA_BULK_THRESHOLD,
            bulk_data_element_handler=lambda _element: "",
            suppress_invalid_tags=True,
        )
        # The syntax the frames come in: viewers pick their decoder with it.
        item["00083002"] = {"vr": "UI", "Value": [instance.transfer_syntax]}
        out.append(item)
    return out


def error_response(exc: WadoError) -> JSONResponse:
    return JSONResponse(
        {"status": exc.status, "erreur": exc.message}, status_code=exc.status, headers=exc.headers
    )


def build_router(routes: WadoRoutes) -> APIRouter:
    """The DICOMweb routes of one mount point (paths relative to its prefix)."""
    router = APIRouter()

    async def guarded(
        request: Request, resource: str, handler: Callable[[], Any], **uids: str | None
    ) -> Response:
        try:
            _check_uids(*(u for u in uids.values() if u is not None))
            response: Response = await handler()
            return response
        except WadoError as exc:
            if exc.status in (401, 403, 404):
                subject, psc_client = await asyncio.to_thread(
                    routes.authorizer.caller_hint, request
                )
                routes.record(
                    request,
                    RetrievalRecord(
                        subject=subject,
                        psc_client=psc_client,
                        study_uid=uids.get("study") or "",
                        series_uid=uids.get("series") or "",
                        sop_instance_uid=uids.get("sop") or "",
                        resource=resource,
                        kos_sop_uid=request.headers.get(KOS_HEADER, "")[:64],
                        result=exc.status,
                        detail=exc.message,
                    ),
                )
            return error_response(exc)

    @router.get("/studies")
    async def studies(request: Request) -> Response:
        return await guarded(request, "search_studies", lambda: routes.search_studies(request))

    @router.get("/studies/{study}")
    async def study(request: Request, study: str) -> Response:
        return await guarded(
            request, "study", lambda: routes.retrieve(request, study, None), study=study
        )

    @router.get("/studies/{study}/metadata")
    async def study_metadata(request: Request, study: str) -> Response:
        return await guarded(
            request, "metadata", lambda: routes.metadata(request, study, None, None), study=study
        )

    @router.get("/studies/{study}/thumbnail")
    async def study_thumbnail(request: Request, study: str) -> Response:
        return await guarded(
            request,
            "thumbnail",
            lambda: routes.rendered(request, study, None, None, thumbnail=True),
            study=study,
        )

    @router.get("/studies/{study}/series")
    async def series_search(request: Request, study: str) -> Response:
        return await guarded(
            request, "search_series", lambda: routes.search_series(request, study), study=study
        )

    @router.get("/studies/{study}/instances")
    async def study_instances(request: Request, study: str) -> Response:
        return await guarded(
            request,
            "search_instances",
            lambda: routes.search_instances(request, study, None),
            study=study,
        )

    @router.get("/studies/{study}/series/{series}")
    async def series(request: Request, study: str, series: str) -> Response:
        return await guarded(
            request,
            "series",
            lambda: routes.retrieve(request, study, [series]),
            study=study,
            series=series,
        )

    @router.get("/studies/{study}/series/{series}/metadata")
    async def series_metadata(request: Request, study: str, series: str) -> Response:
        return await guarded(
            request,
            "metadata",
            lambda: routes.metadata(request, study, series, None),
            study=study,
            series=series,
        )

    @router.get("/studies/{study}/series/{series}/thumbnail")
    async def series_thumbnail(request: Request, study: str, series: str) -> Response:
        return await guarded(
            request,
            "thumbnail",
            lambda: routes.rendered(request, study, series, None, thumbnail=True),
            study=study,
            series=series,
        )

    @router.get("/studies/{study}/series/{series}/instances")
    async def series_instances(request: Request, study: str, series: str) -> Response:
        return await guarded(
            request,
            "search_instances",
            lambda: routes.search_instances(request, study, series),
            study=study,
            series=series,
        )

    @router.get("/studies/{study}/series/{series}/instances/{sop}")
    async def instance(request: Request, study: str, series: str, sop: str) -> Response:
        return await guarded(
            request,
            "instance",
            lambda: routes.retrieve(request, study, [series], sop),
            study=study,
            series=series,
            sop=sop,
        )

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    async def instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
        return await guarded(
            request,
            "metadata",
            lambda: routes.metadata(request, study, series, sop),
            study=study,
            series=series,
            sop=sop,
        )

    @router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
    async def instance_rendered(request: Request, study: str, series: str, sop: str) -> Response:
        return await guarded(
            request,
            "rendered",
            lambda: routes.rendered(request, study, series, sop),
            study=study,
            series=series,
            sop=sop,
        )

    @router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    async def instance_thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
        return await guarded(
            request,
            "thumbnail",
            lambda: routes.rendered(request, study, series, sop, thumbnail=True),
            study=study,
            series=series,
            sop=sop,
        )

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
    async def frames(request: Request, study: str, series: str, sop: str, frames: str) -> Response:
        return await guarded(
            request,
            "frames",
            lambda: routes.frames(request, study, series, sop, frames),
            study=study,
            series=series,
            sop=sop,
        )

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
    async def frame_rendered(
        request: Request, study: str, series: str, sop: str, frame: str
    ) -> Response:
        async def handler() -> Response:
            if not frame.isdigit() or int(frame) < 1:
                raise WadoError(400, "numéro de trame invalide")
            return await routes.rendered(request, study, series, sop, frame=int(frame))

        return await guarded(request, "rendered", handler, study=study, series=series, sop=sop)

    return router


def install(app: FastAPI, prefix: str, routes: WadoRoutes) -> None:
    app.include_router(build_router(routes), prefix=prefix)


__all__ = [
    "KOS_HEADER",
    "Authorizer",
    "PeerAuthorizer",
    "Scope",
    "Visible",
    "WadoError",
    "WadoRoutes",
    "build_router",
    "install",
]
