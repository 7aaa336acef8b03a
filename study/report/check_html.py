"""Check that a report's index.html renders in headless Chromium without errors.

    python -m study.report.check_html results/smoke/report [--chromium /usr/bin/chromium]

Loads the page offline (no network), and fails if Chromium logs a console error or an
uncaught exception, if any embedded figure does not decode as a PNG, if the rendered
DOM lacks a figure the file has, or if the screenshot is blank. Needs a Chromium binary
(Debian: ``apt-get install chromium``). Exit code 0 when the page is sound.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
_ERROR = re.compile(r"(Uncaught|ERROR:CONSOLE|console\.error|\"error\")", re.IGNORECASE)


def check(report_dir: str | Path, chromium: str | None = None) -> list[str]:
    """Problems found (empty when the page renders cleanly)."""
    page = Path(report_dir).resolve() / "index.html"
    binary = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        return ["no chromium binary found (apt-get install chromium)"]
    if not page.is_file():
        return [f"{page}: missing"]
    html = page.read_text()
    problems = []
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    for i, data in enumerate(uris):
        try:
            Image.open(io.BytesIO(base64.b64decode(data))).verify()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"figure {i}: not a valid PNG ({exc})")
    with tempfile.TemporaryDirectory() as profile:
        common = [binary, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True,
                             text=True, timeout=120)
        shot = Path(profile) / "shot.png"
        snap = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2000",
                               page.as_uri()], capture_output=True, text=True, timeout=120)
        if dom.returncode != 0:
            problems.append(f"chromium exited with {dom.returncode}: {dom.stderr[-500:]}")
        for line in (dom.stderr + snap.stderr).splitlines():
            if "CONSOLE" in line and _ERROR.search(line):
                problems.append(f"console: {line.strip()[:300]}")
        rendered = dom.stdout.count("<img ")
        if rendered != len(uris):
            problems.append(f"the rendered page has {rendered} images, the file {len(uris)}")
        if "</html>" not in dom.stdout:
            problems.append("the rendered DOM is incomplete")
        if not shot.is_file():
            problems.append("chromium wrote no screenshot")
        else:
            with Image.open(shot) as im:
                lo, hi = im.convert("L").getextrema()
            if lo == hi:
                problems.append("the screenshot is blank")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report_dir", type=Path)
    p.add_argument("--chromium", help="path of the Chromium binary")
    args = p.parse_args(argv)
    problems = check(args.report_dir, args.chromium)
    for line in problems:
        print(f"check_html: {line}", file=sys.stderr)
    if not problems:
        print(f"{args.report_dir / 'index.html'}: renders cleanly in headless Chromium")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
