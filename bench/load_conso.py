"""Load: concurrent Conso users on the demo network (black box, as browsers would).

Run: `uv run python bench/load_conso.py [--users 20]`. Starts `drimbox demo` in a subprocess, then
each simulated user signs in with Pro Santé Connect, is launched in context from the RIS (the
demo's launch form), loads the exam history (DMP queries as the user), waits for the background
prefetch from site A, opens the first exam and reads its series metadata and every frame as OHIF
would. Prints errors, latency percentiles and the demo process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile

REPO = Path(__file__).resolve().parents[1]


class LaunchForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.action = values.get("action") or ""
        if tag == "input" and values.get("name"):
            self.fields[str(values["name"])] = values.get("value") or ""


def start_demo(folder: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "drimbox", "demo", "--folder", str(folder), "--fresh"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert process.stdout is not None
    links: dict[str, str] = {}
    for line in process.stdout:
        match = re.match(r"\s+(.+?) : (file://\S+|https?://\S+)\s*$", line)
        if match:
            links[match.group(1)] = match.group(2)
        if "Ctrl-C pour arrêter" in line:
            return process, links
    raise SystemExit("the demo did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    process, links = start_demo(Path(tempfile.mkdtemp(prefix="drimbox-load-conso-")) / "demo")
    form = LaunchForm()
    # The demo's RIS page, served from the origin the Conso declares in `launch_origins`.
    ris_page = links["Lancement contextuel (RIS du site B)"]
    form.feed(httpx.get(ris_page, timeout=30).raise_for_status().text)
    ris = urlsplit(ris_page)
    ris_origin = f"{ris.scheme}://{ris.netloc}"
    base = form.action.rsplit("/lancement", 1)[0]

    def user(index: int) -> dict[str, float]:
        timings: dict[str, float] = {}
        with httpx.Client(base_url=base, follow_redirects=True, timeout=120) as browser:
            browser.get("/connexion", params={"login_hint": "radiologue", "next": "/"})
            started = time.perf_counter()
            history = browser.post("/lancement", data=form.fields, headers={"Origin": ris_origin})
            timings["history"] = time.perf_counter() - started
            assert history.status_code == 200 and "/consultation/" in str(history.url), history
            launch = str(history.url).split("?")[0]
            started = time.perf_counter()
            while True:
                jobs = browser.get(f"{launch}/etat").json()["images"]
                if jobs and all(j["etat"] not in ("en_attente", "en_cours") for j in jobs.values()):
                    break
                time.sleep(0.2)
            timings["prefetch"] = time.perf_counter() - started
            study = re.search(r"/ouvrir/([0-9.]+)", history.text)
            assert study is not None
            uid = study.group(1)
            browser.get(f"{launch}/ouvrir/{uid}", follow_redirects=False)
            started = time.perf_counter()
            json = {"Accept": "application/dicom+json"}
            series = browser.get(f"/dicom-web/studies/{uid}/series", headers=json).json()
            frames = 0
            for item in series:
                series_uid = item["0020000E"]["Value"][0]
                metadata = browser.get(
                    f"/dicom-web/studies/{uid}/series/{series_uid}/metadata", headers=json
                ).json()
                for instance in metadata:
                    sop = instance["00080018"]["Value"][0]
                    frame = browser.get(
                        f"/dicom-web/studies/{uid}/series/{series_uid}/instances/{sop}/frames/1",
                        headers={"Accept": "multipart/related; type=application/octet-stream; "
                                           "transfer-syntax=*"},
                    )  # fmt: skip
                    assert frame.status_code == 200, frame.text
                    frames += 1
            timings["viewer"] = time.perf_counter() - started
            timings["frames"] = frames
        return timings

    started = time.perf_counter()
    errors = 0
    results = []
    with ThreadPoolExecutor(args.users) as pool:
        for future in [pool.submit(user, n) for n in range(args.users)]:
            try:
                results.append(future.result())
            except Exception as exc:  # noqa: BLE001 - counted and shown
                errors += 1
                print(f"  user failed: {exc!r}")
    elapsed = time.perf_counter() - started
    rss = peak_rss_mb(process.pid)
    process.send_signal(signal.SIGINT)
    process.wait(60)
    print(f"{args.users} Conso users on the demo network, {elapsed:.1f} s in all")
    print(f"  errors: {errors} / {args.users}")
    for key, label in (("history", "launch → history page (DMP as the user)"),
                       ("prefetch", "history → prefetch from site A done"),
                       ("viewer", "series list + metadata + every frame")):  # fmt: skip
        values = [r[key] for r in results]
        if values:
            print(f"  {label}: p50 {percentile(values, 0.5):.2f} s, "
                  f"p95 {percentile(values, 0.95):.2f} s")  # fmt: skip
    if results:
        print(f"  frames read per user: {results[0]['frames']:.0f}")
    print(f"  peak RSS of the demo process (2 nodes, simulators in-process): {rss:.0f} MB")


if __name__ == "__main__":
    main()
