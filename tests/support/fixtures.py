"""Fixtures shared by the whole suite, loaded as a pytest plugin (`-p support.fixtures`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drimbox.db import Database
from support.postgres import TemporaryPostgres, find_bin_dir
from support.tools import missing

_counter = iter(range(1_000_000))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """No test may skip: the setup installs every component, and a skipped proof passes unseen.
    A skip (pytest.skip, skipif, importorskip) is reported as a failure."""
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, which the suite forbids: {reason}"
    return report


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TemporaryPostgres]:
    """A PostgreSQL for the run, fsync off (fast); crash tests take `durable_postgres`."""
    yield from _server(durable=False)


@pytest.fixture(scope="session")
def durable_postgres() -> Iterator[TemporaryPostgres]:
    """A PostgreSQL with fsync on (as production), for the tests that SIGKILL a node."""
    yield from _server(durable=True)


def _server(*, durable: bool) -> Iterator[TemporaryPostgres]:
    # The setup installs PostgreSQL: a missing one is a failure, not a skip.
    if find_bin_dir() is None:
        missing("PostgreSQL not installed (Debian package postgresql)")
    server = TemporaryPostgres(durable=durable).start()
    assert server.show("fsync") == ("on" if durable else "off")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind the product supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'drimbox.db'}"
    server: TemporaryPostgres = request.getfixturevalue("postgres_server")
    return server.create_database(f"drimbox_{os.getpid()}_{next(_counter)}")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()
