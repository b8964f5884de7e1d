"""A running node: the listeners and workers of the roles its configuration enables.

Owns start-up order (schema upgrade first, then listeners) and a clean stop: the MLLP listener
stops accepting, in-flight messages finish, workers stop between two reports.
"""

from __future__ import annotations

import asyncio
import logging

from drimbox.config import Config
from drimbox.db import Database, DmpJob, Report
from drimbox.db.leases import reclaim
from drimbox.dicom.pacs import PacsClient
from drimbox.dicom.retrieve import ImageService, RemoteStudies
from drimbox.dicom.scp import StoreScp
from drimbox.hl7.server import MllpServer
from drimbox.metrics import NodeMetrics
from drimbox.ops.retention import RetentionWorker
from drimbox.source.dmp_port import ClientDmpPort, dmp_port
from drimbox.source.grants import Grants
from drimbox.source.intake import ReportIntake
from drimbox.source.iocm import IocmStoreHandler
from drimbox.source.outbox import DmpPublisher
from drimbox.source.pipeline import ReportPipeline, pacs_settings
from drimbox.source.recheck import LateImagesWorker
from drimbox.trust.keys import KeyFileError, key_problems
from drimbox.trust.store import WhitelistStore, whitelist_store
from drimbox.trust.tls import mllp_ssl_context
from drimbox.web.assembly import WebServers, build_web, transport_problems

log = logging.getLogger(__name__)


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.db = Database(config.store.database_url, config.node.name)
        self.metrics = NodeMetrics(config.node.name)
        self.mllp: MllpServer | None = None
        self.pipeline: ReportPipeline | None = None
        self.publisher: DmpPublisher | None = None
        self.scp: StoreScp | None = None
        self.whitelist: WhitelistStore | None = None
        self.images: ImageService | None = None
        self.web: WebServers | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        problems = key_problems(self.config)
        if problems:  # refuse to start rather than fail at the first DMP or peer call
            raise KeyFileError("clés privées inutilisables : " + " ; ".join(problems))
        await asyncio.to_thread(self.db.upgrade)
        if problems := transport_problems(self.config):
            raise ValueError(" ; ".join(problems))
        if self.config.roles.source:
            await asyncio.to_thread(self._reclaim)
        self.whitelist = whitelist_store(self.config)
        if self.whitelist is not None:
            self._tasks.append(asyncio.create_task(self._keep_trust(self.whitelist)))
        if self.config.roles.source:
            intake = ReportIntake(self.db, on_stored=self._new_work)
            self.mllp = MllpServer(
                intake.handle_async,
                self.config.hl7.host,
                self.config.hl7.port,
                max_message_bytes=self.config.hl7.max_message_bytes,
                idle_timeout_s=self.config.hl7.idle_timeout_s,
                max_connections=self.config.hl7.max_connections,
                max_pending_bytes=self.config.hl7.max_pending_bytes,
                ssl=mllp_ssl_context(self.config),
            )
            await self.mllp.start()
            self.pipeline = ReportPipeline(self.config, self.db)
            self._tasks.append(asyncio.create_task(self.pipeline.run_forever(self._stop)))
            self.scp = StoreScp(
                self.config.pacs.calling_aet,
                self.config.pacs.scp_host,
                self.config.pacs.scp_port,
                senders=self.config.pacs.scp_calling_aets(),
                sender_hosts=self.config.pacs.scp_sender_hosts,
            )
            self.scp.add_handler(IocmStoreHandler(self.db))
            await asyncio.to_thread(self.scp.start)
            self.publisher = DmpPublisher(self.config, self.db, dmp_port(self.config), self.metrics)
            self.pipeline.on_processed = self.publisher.wake
            self._tasks.append(asyncio.create_task(self.publisher.run_forever(self._stop)))
            late = LateImagesWorker(self.config, self.db, PacsClient(pacs_settings(self.config)))
            self._tasks.append(asyncio.create_task(late.run_forever(self._stop)))
        if self.config.roles.source or self.config.roles.conso:
            # Conso exams (studies of other sites) come from their Source, never from the PACS.
            remote = RemoteStudies(Grants(self.db).is_conso_study)
            self.images = ImageService(
                self.config, scp=self.scp, remote=remote, metrics=self.metrics
            )
            self.web = build_web(self.config, self.db, self.images, self.whitelist)
            for server in self.web.servers():
                await server.start()
        retention = RetentionWorker(self.config, self.db, cache_purge=self._purge_cache,
                                    metrics=self.metrics, stop=self._stop)  # fmt: skip
        self._tasks.append(asyncio.create_task(retention.run_forever(self._stop)))

    def _new_work(self) -> None:
        """A report was just stored: the pipeline looks now, and the publisher too (a
        withdrawal goes straight to the DMP outbox), instead of at their next poll."""
        for worker in (self.pipeline, self.publisher):
            if worker is not None:
                worker.wake()

    def _purge_cache(self) -> tuple[int, int]:
        """The expired series of this node's image cache ([store] cache_ttl_h)."""
        if self.images is None:
            return 0, 0
        result = self.images.cache.purge(expired_only=True)
        return result.series, result.bytes

    async def _keep_trust(self, store: WhitelistStore) -> None:
        """Refresh the CRLs and the whitelist until the node stops."""
        trust = self.config.trust
        loops = []
        if store.revocation is not None:
            # CRLs first: the first list a fresh install fetches is checked against its signer's
            # CRL, not only against the ones cached by an earlier run.
            await asyncio.to_thread(store.revocation.refresh)
            loops.append(
                store.revocation.run_forever(
                    self._stop, trust.crl_refresh_interval_s, refresh_first=False
                )
            )
        loops.append(store.run_forever(self._stop, trust.refresh_interval_s))
        await asyncio.gather(*loops)

    def _reclaim(self) -> None:
        """Work this node held when it last died is due again now, not after its lease."""
        name = self.config.node.name
        reports, jobs = (reclaim(self.db, model, name) for model in (Report, DmpJob))
        if reports or jobs:
            log.warning("node %s: %d report(s), %d DMP job(s) taken back", name, reports, jobs)

    async def stop(self) -> None:
        self._stop.set()
        if self.web is not None:
            for server in reversed(self.web.servers()):
                await server.stop()
            self.web.close()
        if self.mllp is not None:
            await self.mllp.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        if self.publisher is not None and isinstance(self.publisher.port, ClientDmpPort):
            self.publisher.port.close()
        self.db.dispose()

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
