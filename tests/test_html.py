"""The HTML report: self-contained, carries the JSON report's numbers, renders in a browser."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import graphprune
from graphprune.report import html as report_html

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo.onnx"


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and tag != "img":
                self.links.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Collect:
    p = Collect()
    p.feed(text)
    p.close()
    return p


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    model = d / "demo.onnx"
    shutil.copy(DEMO, model)
    r = subprocess.run([sys.executable, "-m", "graphprune.cli.main", str(model), "--ratio", "0.4",
                        "--html", str(d / "report.html"), "--report", str(d / "report.json"),
                        "--benchmark", "--repeats", "5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d / "report.html", json.loads((d / "report.json").read_text())


def test_html_is_self_contained_and_has_report_numbers(cli_report):
    page, rep = cli_report
    text = page.read_text(encoding="utf-8")
    p = parse(text)
    pngs = [s for s in p.imgs if s.startswith("data:image/png;base64,")]
    assert len(pngs) >= 2 and len(pngs) == len(p.imgs)
    assert not p.links, "no external references"
    assert "http://" not in text and "https://" not in text
    body = " ".join(p.text)
    for key in ("params", "macs", "file_bytes"):
        for when in ("before", "after"):
            assert f"{rep[key][when]:,}" in body, (key, when)
    assert "latency" in body and "cosine similarity" in body
    for g in rep["groups"]:
        if g["frozen_reason"]:
            assert g["frozen_reason"] in body
    assert any(g.get("scores") for g in rep["groups"]), "per-unit scores for the score plot"


def test_render_without_latency_or_fidelity():
    res = graphprune.prune(str(DEMO), ratio=0.3, validate=False)
    rep = res.report
    assert rep.get("latency_ms") is None
    p = parse(report_html.render(rep))
    assert len([s for s in p.imgs if s.startswith("data:image/png;base64,")]) >= 2
    assert "Fidelity not measured" in " ".join(p.text)


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def test_renders_in_headless_chromium(cli_report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); "
                    "the screenshot check needs a real browser")
    page, _ = cli_report
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,2000", page.resolve().as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
    import matplotlib.image

    img = matplotlib.image.imread(str(shot))
    assert img.shape[0] == 2000 and img.shape[1] == 1200
    assert img[..., :3].std() > 0.05, "the page rendered as a blank image"
