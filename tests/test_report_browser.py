"""The HTML report in a real browser: headless Chromium loads it offline, its script runs without
errors (and only its script: the page's CSP refuses any other inline script), the protocol
switch honours ``#protocol=standard``, and the tables and embedded figures are in the DOM."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report import fill_store  # the realistic store of the report tests

from kdcicam.registry.ablations import load_registry
from kdcicam.report import build_report, render
from kdcicam.store import open_store

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
INJECTED = "<script>document.body.setAttribute('data-injected', 'ran')</script>"


def _chromium_dom(page: Path, profile: Path, fragment: str = "") -> tuple[str, str]:
    """The DOM after load, and the browser's log (console messages included)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri() + fragment]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def test_report_loads_in_headless_chromium(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    fill_store(url, tmp_path)
    reg = load_registry()
    with open_store(url) as store:
        data = build_report(store, reg, table_keys=["table3", "table4"])
    html = render(data, reg, "html").text
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert Image.open(io.BytesIO(base64.b64decode(uri))).size[0] > 300  # a real, decodable figure
    # a script that is not the report's own must be refused by the page's Content-Security-Policy
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", INJECTED + "\n</body>"), encoding="utf-8")

    dom, log = _chromium_dom(page, tmp_path / "profile", "#protocol=standard")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-report-js="ready"' in body  # the inline script ran to its end
    assert 'data-active-protocol="standard"' in body and "data-injected" not in body
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line], console
    assert len([line for line in console if "Content Security Policy" in line]) == 1, console
    # the standard pane is shown, the paper pane hidden; both are in the document
    assert re.search(r'<div class="pane" data-protocol="standard">', dom)
    assert re.search(r'<div class="pane" data-protocol="paper" hidden="">', dom)
    # per protocol: Tables 3 and 4 and the claims ledger of the cells that ran
    assert dom.count('<table class="results">') == 6 and dom.count("<img") == 3
    assert 'aria-pressed="true">standard</button>' in dom
