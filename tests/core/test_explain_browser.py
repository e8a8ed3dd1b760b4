"""`rulegen explain`'s page in a real browser: headless Chromium draws it, and lays it out quickly.

Two pages: the web-frontend example's and a 200-Service cluster's (from
`rulegen bench gen`, 270 Service ports). Chromium (the Debian package
`make test` installs) takes a screenshot of each; the PNG is read with the
stdlib (tests/pngread.py) and must not be blank: many colours, dark text
pixels, no single colour filling the picture. A blank page is shown to
fail the same check. The layout time is the page's own clock: a copy of
the page gets a one-line script that, once the page has loaded and a
layout has been forced, writes `performance.now()` into the title, read
back with `--dump-dom`; it must be under 2 s (the shipped page has no
script). Without Chromium the tests are skipped with that reason.

Chromium runs with a fresh profile each time and every network-facing
feature off; the pages are local files and name no URL.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pngread import read_png

from rulegen.bench.gen import generate, to_yaml

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "examples" / "web-frontend"
BROWSER = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
LAYOUT_BUDGET_MS = 2000
WINDOW = "1280,900"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--hide-scrollbars")
CLOCK = ("<script>window.addEventListener('load',function(){document.body.getBoundingClientRect();"
         "document.title='rg-layout-ms='+Math.round(performance.now());});</script>")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (make test installs the "
                                                         "Debian package chromium)")]


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="rg-chromium-") as profile:
        return subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=180)


def screenshot(page: Path, out: Path) -> bytes:
    r = chromium(f"--screenshot={out}", f"--window-size={WINDOW}", page.as_uri())
    assert out.exists(), r.stderr.decode(errors="replace")[-2000:]
    return out.read_bytes()


def layout_ms(page: Path, tmp: Path) -> int:
    timed = tmp / ("timed-" + page.name)
    timed.write_text(page.read_text().replace("</body>", CLOCK + "</body>"))
    r = chromium("--dump-dom", f"--window-size={WINDOW}", timed.as_uri())
    m = re.search(r"<title>rg-layout-ms=(\d+)</title>", r.stdout.decode(errors="replace"))
    assert m, r.stderr.decode(errors="replace")[-2000:]
    return int(m.group(1))


def looks_drawn(png: bytes) -> tuple[bool, str]:
    img = read_png(png)
    colours = img.colours(step=2)
    total = sum(colours.values())
    top = colours.most_common(1)[0][1] / total
    dark = sum(n for c, n in colours.items() if max(c) < 110)
    ok = len(colours) > 40 and top < 0.97 and dark > 200
    return ok, f"{img.width}x{img.height}, {len(colours)} colours, commonest {top:.1%}, {dark} dark samples"


def explain_page(cli, files: list[str], out: Path) -> Path:
    r = cli("explain", *files, "-o", str(out))
    assert r.exit_code == 0, r.output
    return out


def test_the_blank_check_fails_on_a_blank_page(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>x</title></head><body></body></html>")
    ok, why = looks_drawn(screenshot(blank, tmp_path / "blank.png"))
    assert not ok, why


def test_the_example_page_renders(cli, tmp_path):
    page = explain_page(cli, [str(WEB)], tmp_path / "web.html")
    ok, why = looks_drawn(screenshot(page, tmp_path / "web.png"))
    assert ok, why
    assert layout_ms(page, tmp_path) < LAYOUT_BUDGET_MS


def test_a_200_service_page_renders_and_lays_out_in_time(cli, tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(to_yaml(generate(200, 10)))
    page = explain_page(cli, [str(cluster)], tmp_path / "big.html")
    assert page.read_text().count('<section class="port"') == 270
    ok, why = looks_drawn(screenshot(page, tmp_path / "big.png"))
    assert ok, why
    assert layout_ms(page, tmp_path) < LAYOUT_BUDGET_MS
