"""`rulegen explain`'s page in a real browser: headless Chromium draws it and lays its text out.

Two pages: the web-frontend example's and a 200-Service cluster's (from
`rulegen bench gen`, 270 Service ports). Chromium (the Debian package
`make test` installs) takes a screenshot of each; the PNG is decoded with
the stdlib (tests/pngread.py) and must not be blank: many colours, dark
text pixels, no single colour filling the picture. A blank page is shown
to fail the same check. Then `--dump-dom` reads the page back as Chromium
built it: every Service port's heading is there, and in a copy of the
example's page a one-line script (the shipped page has none) writes into
the title how many SVG labels the browser laid out with a width, and
which overflow their box: the layout measures text without a browser
(monospace, 0.6 em a glyph), and this is where that is checked.

Printed (`--print-to-pdf`), the page is laid across landscape pages,
where the wide diagrams keep a readable size.

How long Chromium takes is not asserted (wall-clock figures are noisy);
the page keeps the work bounded instead: sections out of view are not
laid out (`content-visibility: auto`, checked in the DOM).

Without Chromium the tests are skipped with that reason only where no one
could have installed it: as root (`make test` installs it) or in CI (the
`CI` variable) a missing Chromium fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from explainhelp import parse_page
from pngread import read_png

from rulegen.bench.gen import generate, to_yaml

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "examples" / "web-frontend"
WINDOW = "1280,900"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--hide-scrollbars")
# Each node's labels against its shape's width, as the browser measures them; the answer goes in the title.
MEASURE = ("<script>window.addEventListener('load',function(){var n=0,bad=[];"
           "document.querySelectorAll('g.rg-node').forEach(function(g){"
           "var w=g.querySelector('.rg-shape').getBBox().width;"
           "g.querySelectorAll('text').forEach(function(t){n++;var l=t.getComputedTextLength();"
           "if(!(l>0)||l>w*1.02)bad.push(t.textContent+' '+l.toFixed(1)+'/'+w.toFixed(1));});});"
           "document.title='rg-measured='+n+' overflow='+bad.length+' '+bad.slice(0,5).join(' | ');});"
           "</script>")


def find_browser(which=shutil.which, environ=os.environ, euid: int | None = None) -> tuple[str | None, str]:
    """(the browser, "") or (None, why): why starts with "fail" where a missing Chromium is an error."""
    browser = next((b for b in ("chromium", "chromium-browser") if which(b)), None)
    if browser:
        return browser, ""
    euid = os.geteuid() if euid is None else euid
    if environ.get("CI") or euid == 0:
        return None, ("fail: chromium is not installed, and here it should be: `make test` installs the Debian "
                      "package chromium as root (see its output for why apt-get could not)")
    return None, "skip: chromium is not installed (`make test` as root installs the Debian package chromium)"


BROWSER, WHY = find_browser()


@pytest.fixture
def browser() -> str:
    if BROWSER is None:
        if WHY.startswith("fail"):
            pytest.fail(WHY)
        pytest.skip(WHY)
    return BROWSER


def chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="rg-chromium-") as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=180)


def screenshot(browser: str, page: Path, out: Path) -> bytes:
    r = chromium(browser, f"--screenshot={out}", f"--window-size={WINDOW}", page.as_uri())
    assert out.exists(), r.stderr.decode(errors="replace")[-2000:]
    return out.read_bytes()


def dump_dom(browser: str, page: Path) -> str:
    r = chromium(browser, "--dump-dom", f"--window-size={WINDOW}", page.as_uri())
    dom = r.stdout.decode(errors="replace")
    assert "<html" in dom, r.stderr.decode(errors="replace")[-2000:]
    return dom


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


def headings(html: str) -> list[str]:
    return re.findall(r'<h2 id="p\d+-h">([^<]*)</h2>', html)


def test_a_missing_browser_fails_as_root_or_in_ci_and_skips_elsewhere():
    none = lambda name: None  # noqa: E731
    assert find_browser(lambda name: "/usr/bin/x" if name == "chromium" else None, {}, 0) == ("chromium", "")
    assert find_browser(none, {}, 0)[1].startswith("fail: chromium is not installed")
    assert find_browser(none, {"CI": "true"}, 1000)[1].startswith("fail: ")
    assert find_browser(none, {}, 1000)[1].startswith("skip: chromium is not installed")


@pytest.mark.slow
def test_the_blank_check_fails_on_a_blank_page(browser, tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>x</title></head><body></body></html>")
    ok, why = looks_drawn(screenshot(browser, blank, tmp_path / "blank.png"))
    assert not ok, why


@pytest.mark.slow
def test_the_example_page_renders_with_its_text_laid_out(browser, cli, tmp_path):
    page = explain_page(cli, [str(WEB)], tmp_path / "web.html")
    ok, why = looks_drawn(screenshot(browser, page, tmp_path / "web.png"))
    assert ok, why
    html = page.read_text()
    dom = parse_page(dump_dom(browser, page))
    mine = parse_page(html)
    assert [s.attrs["id"] for s in dom.sections] == ["p1"]
    (d,) = dom.sections[0].diagrams
    assert d.labels() == mine.sections[0].diagrams[0].labels()  # every label, chain name and share
    assert "KUBE-SVC-V6JAHO4SRYC5AWNY" in d.labels("rg-label") and "33.3%" in d.labels("rg-elabel")
    measured = tmp_path / "measured.html"
    measured.write_text(html.replace("</body>", MEASURE + "</body>"))
    m = re.search(r"<title>rg-measured=(\d+) overflow=(\d+)([^<]*)</title>", dump_dom(browser, measured))
    assert m, "the measuring script did not run"
    node_texts = sum(1 for g in mine.sections[0].diagrams[0].groups if "rg-node" in g["attrs"]["class"])
    assert int(m.group(1)) >= 2 * node_texts  # a label and a sub-line at least, each laid out with a width
    assert m.group(2) == "0", "labels wider than their box: " + m.group(3)


@pytest.mark.slow
def test_a_200_service_page_renders_and_keeps_off_screen_sections_unlaid(browser, cli, tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(to_yaml(generate(200, 10)))
    page = explain_page(cli, [str(cluster)], tmp_path / "big.html")
    html = page.read_text()
    assert html.count('<section class="port"') == 270
    ok, why = looks_drawn(screenshot(browser, page, tmp_path / "big.png"))
    assert ok, why
    dom = dump_dom(browser, page)
    assert headings(dom) == headings(html) and len(headings(dom)) == 270
    assert "content-visibility: auto" in dom and dom.count("contain-intrinsic-size: auto ") == 271


@pytest.mark.slow
def test_the_example_page_prints_across_landscape_pages(browser, cli, tmp_path):
    page = explain_page(cli, [str(WEB)], tmp_path / "web.html")
    pdf = tmp_path / "web.pdf"
    r = chromium(browser, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
    assert pdf.exists(), r.stderr.decode(errors="replace")[-2000:]
    data = pdf.read_bytes()
    boxes = [tuple(float(v) for v in m) for m in re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data)]
    pages = len(re.findall(rb"/Type /Page\b", data))
    assert boxes and all(w > h for w, h in boxes), boxes
    assert 2 <= pages <= 4, pages  # the header, then the Service port: its diagram, facts and table
