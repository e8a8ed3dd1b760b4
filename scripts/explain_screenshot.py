#!/usr/bin/env python3
"""Remake docs/img/explain-web-frontend.png: the README's picture of `rulegen explain`'s page for the example.

Runs `rulegen explain examples/web-frontend/ -o PAGE` (this checkout's
rulegen) and has headless Chromium take a screenshot of the page, with a
fresh profile and every network feature off. Chromium's PNG bytes differ
between runs and versions, so the picture is remade by hand (`make
explain-png`) when the page changes, and reviewed like any other change.

    .venv/bin/python scripts/explain_screenshot.py [-o docs/img/explain-web-frontend.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img" / "explain-web-frontend.png"
WINDOW = "2400,960"  # the header and the whole diagram of the example
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--hide-scrollbars")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(OUT))
    args = ap.parse_args()
    browser = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    if browser is None:
        print("explain_screenshot: chromium is not installed (make test installs it)", file=sys.stderr)
        return 2
    rulegen = Path(sys.executable).with_name("rulegen")
    with tempfile.TemporaryDirectory(prefix="rg-explain-") as tmp:
        page = Path(tmp) / "web-frontend.html"
        subprocess.run([str(rulegen), "explain", "examples/web-frontend/", "-o", str(page)], cwd=ROOT, check=True)
        shot = Path(tmp) / "shot.png"
        subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp}/profile", f"--screenshot={shot}",
                        f"--window-size={WINDOW}", page.as_uri()], capture_output=True, check=True, timeout=180)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, args.output)
    print(f"explain_screenshot: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
