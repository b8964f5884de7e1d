"""README's demo command, toured as a new user would, in headless Chromium: the RIS's launch page
at site B → Pro Santé Connect sign-in → the exam history → the viewer draws the first image →
export to PACS B → site A's administration console shows the publication and the audit records
of the tour; then Ctrl-C stops everything and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.tools import missing, require_chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
DRAWN_JS = """() => {
    for (const canvas of document.querySelectorAll('canvas.cornerstone-canvas')) {
        if (!canvas.width || !canvas.height) continue;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let lit = 0;
        for (let i = 0; i < data.length; i += 4) if (data[i] || data[i + 1] || data[i + 2]) lit++;
        if (lit / (data.length / 4) > 0.05) return true;
    }
    return false;
}"""


DATES_ON_ONE_LINE_JS = """() => [...document.querySelectorAll('td.when')].every(td => {
    const range = document.createRange();
    range.setStart(td.firstChild, 0);
    range.setEnd(td.firstChild, 10);
    return range.getClientRects().length === 1;
})"""


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], Path]]:
    if not (REPO / "var" / "ohif" / "index.html").exists():
        missing("OHIF not installed in var/ohif (scripts/install-ohif.sh)")
    folder = tmp_path_factory.mktemp("demo") / "network"
    process = subprocess.Popen(
        [sys.executable, "-m", "drimbox", "demo", "--folder", str(folder), "--fresh"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert process.stdout is not None
    links: dict[str, str] = {}
    lines = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
        lines.append(line)
        match = re.match(r"\s+(.+?) : (file://\S+|https?://\S+)\s*$", line)
        if match:
            links[match.group(1)] = match.group(2)
        pacs = re.search(r"PACS B (http://\S+)", line)
        if pacs:
            links["PACS B"] = pacs.group(1)
        if "Ctrl-C pour arrêter" in line or time.monotonic() > deadline:
            break
    assert "Ctrl-C pour arrêter" in "".join(lines), "".join(lines)
    yield process, links, folder
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def to_the_ventricles(page: Any) -> None:
    """Scroll the stack from the vertex down to mid-height, as a reader would (for the
    screenshot: the ventricles and the lesion)."""
    box = page.locator("canvas.cornerstone-canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(9):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)


def test_tour(demo: tuple[subprocess.Popen[str], dict[str, str], Path]) -> None:
    process, links, folder = demo
    require_chromium()
    from playwright.sync_api import sync_playwright

    launch = links["Lancement contextuel (RIS du site B)"]
    admin_a = links["Console d'administration A"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page: Any = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(launch)
        page.click("#lancer")
        page.click("button[value=radiologue]")  # the PSC simulator's login page
        page.wait_for_url("**/consultation/*")
        history = page.url.split("?")[0]
        assert "PAT-TROIS" in page.content()
        # Two distinct exams: the recent MR first, then the prior CT, each with its
        # accession, series and images, and the site that made it.
        rows = page.locator("tbody tr").all_inner_texts()
        assert len(rows) == 2, rows
        mr, ct = rows
        assert "18/11/2025 à 10 h 25" in mr and "\tMR\t" in mr and "IRM cérébrale" in mr
        assert "N° d'examen : ACN108" in mr and "4 séries, 80 images" in mr
        assert "08/01/2021" in ct and "\tCT\t" in ct and "Scanner cérébral" in ct
        assert "N° d'examen : ACN103" in ct and "3 séries, 72 images" in ct
        # A date is never cut inside (18/11/2 | 025): its 10 characters on one line.
        assert page.evaluate(DATES_ON_ONE_LINE_JS)
        # The region column: regions only (the CCAM act is not one).
        assert all("\tstructure de la tête et/ou du cou\t" in row for row in rows)
        assert all("Centre de radiologie Ambroise" in row for row in rows)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-tour-history.png"), full_page=True)
        page.click("a[href*='/ouvrir/']")  # the MR
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        page.wait_for_function(DRAWN_JS, timeout=120_000, polling=250)
        to_the_ventricles(page)
        page.screenshot(path=str(ARTIFACTS / "demo-tour-viewer.png"))
        page.goto(history)
        page.locator("a[href*='/ouvrir/']").nth(1).click()  # the prior CT
        page.wait_for_url(lambda url: "/viewer?StudyInstanceUIDs=" in url)
        page.wait_for_function(DRAWN_JS, timeout=120_000, polling=250)
        to_the_ventricles(page)
        page.screenshot(path=str(ARTIFACTS / "demo-tour-viewer-ct.png"))
        page.goto(history)
        page.locator("button[formaction*='/export/']").first.click()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            exports = page.request.get(f"{history}/etat").json()["exports"]
            if exports and all(j["etat"] == "termine" for j in exports.values()):
                break
            time.sleep(0.5)
        assert exports and all(j["etat"] == "termine" for j in exports.values()), exports
        # Site A's console: the publications, and the audit records of this tour.
        page.goto(f"{admin_a}/comptes-rendus")
        page.click("button[value=radiologue]")
        page.wait_for_url("**/admin/comptes-rendus")
        assert page.content().count("publié au DMP") >= 2
        reports = page.locator("main table").inner_text()
        assert "publication" in reports and "publish" not in reports  # French, not the codes
        page.goto(f"{admin_a}/audit?utilisateur=899700100011")
        audit_page = page.content()
        assert "images servies" in audit_page and "connexion" in audit_page
        traces = page.locator("main table").inner_text()
        assert "professionnel de santé" in traces
        for code in ("image_retrieve", "\tuser\t", "\tpeer\t", "login"):
            assert code not in traces, code
        page.screenshot(path=str(ARTIFACTS / "demo-tour-admin.png"))
        browser.close()
    exported = httpx.get(f"{links['PACS B']}/instances", timeout=10).json()
    assert len(exported) == 80  # the MR's four series, now in site B's PACS

    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    leftovers = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"
