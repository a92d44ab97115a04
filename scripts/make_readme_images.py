"""Regenerate the README images from the bundled demo model.

    python scripts/make_readme_images.py [--chromium PATH]

- docs/report.png: a headless-Chromium screenshot of the HTML report of
  `graphprune models/demo.onnx --ratio 0.5 --benchmark --html ...`;
- docs/sweep.png: the plot `graphprune sweep models/demo.onnx` writes.

Both run the real command line, so the images show what a user gets. Latency numbers depend on
the machine; the rest is deterministic.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo.onnx"
DOCS = ROOT / "docs"


def gp(cwd: Path, *args) -> None:
    """Run the CLI inside `cwd` with relative paths, so the report shows plain file names."""
    subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, cwd=cwd)


def screenshot(chromium: str, page: Path, png: Path, size=(1200, 2400)) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={png}",
                        f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=180)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chromium",
                    default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = ap.parse_args(argv)
    if not args.chromium:
        sys.exit("needs chromium for the report screenshot (apt-get install -y chromium)")
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        shutil.copy(DEMO, t / "demo.onnx")
        gp(t, "demo.onnx", "--ratio", "0.5", "--benchmark", "--threads", "1", "--repeats", "200",
           "--html", "report.html", "--quiet")
        screenshot(args.chromium, t / "report.html", DOCS / "report.png")
        gp(t, "sweep", "demo.onnx", "--ratios", "0.1,0.2,0.3,0.4,0.5,0.6,0.7", "--max-drop",
           "0.1", "--threads", "1", "--repeats", "200", "--out", "sweep", "--quiet")
        shutil.copy(t / "sweep" / "sweep.png", DOCS / "sweep.png")
    print(f"wrote {DOCS / 'report.png'} and {DOCS / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
