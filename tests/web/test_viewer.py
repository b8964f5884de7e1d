"""The Source viewer origin: OHIF served as shipped, the session gate, IHE IID links, the
same-origin DICOMweb endpoints, and a real headless Chromium drawing the first image."""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from pydicom.uid import JPEGLSLossless

from drimbox.config import Config, load_config
from drimbox.db import Database
from drimbox.db.models import ReportState
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.psc import RADIOLOGIST
from drimbox.sim.studies import SeriesSpec
from drimbox.web.app import create_viewer_app
from drimbox.web.viewer import SESSION_COOKIE, MemorySessionStore, ViewerAuth
from support.source import PublishedStudy, publish_study, serving, set_state
from support.tools import missing, require_chromium

REPO = Path(__file__).resolve().parents[2]
OHIF_DIR = REPO / "var" / "ohif"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def ohif_dir() -> Path:
    """OHIF installed by the test run itself when absent (scripts/install-ohif.sh)."""
    if not (OHIF_DIR / "index.html").exists():
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "install-ohif.sh"), str(OHIF_DIR)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            missing(f"OHIF could not be installed: {result.stderr[-2000:]}")
    return OHIF_DIR


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'viewer.db'}")
    database.upgrade()
    yield database
    database.dispose()


def viewer_config(tmp_path: Path, orthanc: LocalOrthanc, ohif: Path) -> Config:
    return load_config(
        environ={
            "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'viewer.db'}",
            "DRIMBOX_STORE__CACHE_DIR": str(tmp_path / "cache"),
            "DRIMBOX_PACS__HOST": "127.0.0.1",
            "DRIMBOX_PACS__PORT": str(orthanc.dicom_port),
            "DRIMBOX_PACS__CALLED_AET": orthanc.aet,
            "DRIMBOX_VIEWER__OHIF_DIR": str(ohif),
        }
    )


def iid_link(base: str, study: PublishedStudy) -> str:
    return (
        f"{base}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={study.study_uid}"
        f"&accessionNumber={study.accession}&idCDA={quote(study.document_id)}"
    )


def test_viewer_origin_gate_iid_and_static(
    tmp_path: Path, orthanc: LocalOrthanc, db: Database, ohif_dir: Path
) -> None:
    study = publish_study(db, orthanc, tmp_path, [SeriesSpec("CT", "A", 2)])
    hidden = publish_study(db, orthanc, tmp_path, [SeriesSpec("CT", "B", 1)])
    sessions = MemorySessionStore()
    app = create_viewer_app(viewer_config(tmp_path, orthanc, ohif_dir), db, ViewerAuth(sessions))
    with serving(app) as base:
        anonymous = httpx.Client(base_url=base)
        # Without a session: pages go to the French login placeholder, data answers 401.
        for path in ("/viewer?StudyInstanceUIDs=1.2.3", iid_link("", study)):
            response = anonymous.get(path)
            assert response.status_code == 303 and response.headers["location"].startswith(
                "/connexion"
            )
        # The root is the DRIMbox's own French page (not OHIF's English 404), with its icon.
        home = anonymous.get("/")
        # Security headers on every answer of the origin (pages, data, errors).
        for answer in (home, anonymous.get("/dicom-web/studies")):
            # Framed by its own pages only (the Conso's history frames the named exam).
            assert answer.headers["x-frame-options"] == "SAMEORIGIN"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert "frame-ancestors 'self'" in answer.headers["content-security-policy"]
        assert home.status_code == 200 and "lancez la consultation" in home.text
        assert 'lang="fr"' in home.text and "Not Found" not in home.text
        icon = anonymous.get("/favicon.ico")
        assert (
            icon.status_code == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
        )
        css = anonymous.get("/_drimbox/drimbox.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        login = anonymous.get("/connexion")
        assert login.status_code == 401 and "Pro Santé Connect" in login.text
        qido = anonymous.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
        assert qido.status_code == 401
        # Static assets: as shipped, wasm typed, gzip, immutable caching for hashed names.
        config_js = anonymous.get("/app-config.js")
        assert "qidoRoot: '/dicom-web'" in config_js.text
        wasm = next(ohif_dir.glob("*.wasm")).name
        response = anonymous.get(f"/{wasm}", headers={"Accept-Encoding": "identity"})
        assert response.headers["content-type"] == "application/wasm"
        assert "immutable" in response.headers["cache-control"]
        bundle = next(ohif_dir.glob("app.bundle.*.js")).name
        raw = httpx.get(f"{base}/{bundle}", headers={"Accept-Encoding": "gzip"})
        assert raw.headers["content-encoding"] == "gzip"
        assert raw.content == (ohif_dir / bundle).read_bytes()  # httpx decoded it
        assert anonymous.get("/missing.js").status_code == 404
        assert anonymous.get("/../pyproject.toml").status_code in (404, 400)

        session = sessions.create("899700218896", "Dr Test", userinfo=RADIOLOGIST.userinfo())
        user = httpx.Client(base_url=base, cookies={SESSION_COOKIE: session.id})
        index = user.get("/viewer/dicomweb")
        assert index.status_code == 200 and "<html" in index.text.lower()
        # Nothing is visible before an IID link opened it.
        studies = user.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
        assert studies.json() == []
        not_granted = user.get(
            f"/dicom-web/studies/{study.study_uid}/series",
            headers={"Accept": "application/dicom+json"},
        )
        assert not_granted.status_code == 404
        # A link whose report does not match is refused.
        wrong = iid_link("", study).replace(study.document_id, hidden.document_id)
        assert user.get(wrong).status_code == 404
        assert user.get(iid_link("", study).replace("STUDY", "PATIENT")).status_code == 400
        response = user.get(iid_link("", study))
        assert response.status_code == 303
        assert response.headers["location"] == f"/viewer?StudyInstanceUIDs={study.study_uid}"
        listed = user.get(
            f"/dicom-web/studies?limit=101&offset=0&StudyInstanceUID={study.study_uid}",
            headers={"Accept": "application/dicom+json"},
        ).json()
        assert [s["0020000D"]["Value"][0] for s in listed] == [study.study_uid]
        assert (
            user.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"}).json()
            == listed
        )  # the unfiltered list holds only what this user may see
        metadata = user.get(
            f"/dicom-web/studies/{study.study_uid}/series/{study.series_uids[0]}/metadata",
            headers={"Accept": "application/dicom+json"},
        )
        assert metadata.status_code == 200 and len(metadata.json()) == 2
        # A withdrawn study disappears from the viewer too.
        set_state(db, study.report_id, ReportState.WITHDRAWN.value)
        assert (
            user.get(
                f"/dicom-web/studies/{study.study_uid}/series",
                headers={"Accept": "application/dicom+json"},
            ).status_code
            == 404
        )


def test_iid_parameters_in_any_case_and_the_accession_checked(
    tmp_path: Path, orthanc: LocalOrthanc, db: Database, ohif_dir: Path
) -> None:
    """The CI-SIS template writes `Accessionnumber`: names match whatever their case, and the
    accession so read is checked against the published report."""
    study = publish_study(db, orthanc, tmp_path, [SeriesSpec("CT", "A", 1)])
    sessions = MemorySessionStore()
    app = create_viewer_app(viewer_config(tmp_path, orthanc, ohif_dir), db, ViewerAuth(sessions))

    def link(accession: str, **extra: str) -> str:
        query = {
            "REQUESTTYPE": "STUDY",
            "StudyUid": study.study_uid,
            "Accessionnumber": accession,
            "idcda": study.document_id,
            **extra,
        }
        return "/IHEInvokeImageDisplay?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())

    with serving(app) as base:
        session = sessions.create("899700218896", "Dr Test", userinfo=RADIOLOGIST.userinfo())
        user = httpx.Client(base_url=base, cookies={SESSION_COOKIE: session.id})
        # Another accession under the CI-SIS spelling: refused, not opened unchecked.
        wrong = user.get(link("AUTRE-ACN"))
        assert wrong.status_code == 404 and "numéro d&#39;examen" in wrong.text
        # The same parameter twice, two values: which one to check? Refused.
        twice = user.get(link(study.accession, accessionNumber="AUTRE-ACN"))
        assert twice.status_code == 400 and "répété" in twice.text
        listed = user.get("/dicom-web/studies", headers={"Accept": "application/dicom+json"})
        assert listed.json() == []  # nothing granted by the refused links
        opened = user.get(link(study.accession))
        assert opened.status_code == 303
        assert opened.headers["location"] == f"/viewer?StudyInstanceUIDs={study.study_uid}"
        # The accession is optional in an IID link.
        assert user.get(link("")).status_code == 303


def test_iid_link_opens_ohif_and_the_first_image_is_drawn(
    tmp_path: Path, orthanc: LocalOrthanc, db: Database, ohif_dir: Path
) -> None:
    import playwright.sync_api as playwright_api

    require_chromium()
    study = publish_study(
        db,
        orthanc,
        tmp_path,
        [SeriesSpec("CT", "Thorax", 5)],
        transfer_syntax=JPEGLSLossless,
        rows=512,
        columns=512,
    )
    sessions = MemorySessionStore()
    session = sessions.create("899700218896", "Dr Test", userinfo=RADIOLOGIST.userinfo())
    app = create_viewer_app(viewer_config(tmp_path, orthanc, ohif_dir), db, ViewerAuth(sessions))
    ARTIFACTS.mkdir(exist_ok=True)
    with serving(app) as base, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies([{"name": SESSION_COOKIE, "value": session.id, "url": base}])
            page = context.new_page()
            # The Content-Security-Policy must not block anything OHIF needs.
            blocked: list[str] = []
            page.on(
                "console",
                lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
            )
            outside: list[str] = []
            page.on(
                "request",
                lambda r: outside.append(r.url) if not r.url.startswith(base) else None,
            )
            opened = page.goto(iid_link(base, study))
            assert "/viewer?StudyInstanceUIDs=" in page.url
            assert opened is not None
            policy = opened.headers["content-security-policy"]
            assert "frame-ancestors 'self'" in policy and "'unsafe-eval'" not in policy
            drawn = page.wait_for_function(
                """() => {
                    const canvas = document.querySelector('canvas.cornerstone-canvas');
                    if (!canvas || !canvas.width || !canvas.height) return false;
                    const data = canvas.getContext('2d')
                        .getImageData(0, 0, canvas.width, canvas.height).data;
                    let lit = 0;
                    for (let i = 0; i < data.length; i += 4) {
                        if (data[i] || data[i + 1] || data[i + 2]) lit++;
                    }
                    const ratio = lit / (data.length / 4);
                    return ratio > 0.05 ? ratio : false;
                }""",
                timeout=90_000,
                polling=250,
            )
            ratio = drawn.json_value()
            page.screenshot(path=str(ARTIFACTS / "viewer-iid-first-image.png"))
            assert ratio > 0.05
            assert [u for u in outside if not u.startswith(("data:", "blob:"))] == []
            assert blocked == []
        finally:
            browser.close()
    _ = gzip  # gzip is checked through httpx's decoding above
