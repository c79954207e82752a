"""Acceptance: report.html renders in headless Chromium with every image loaded, not blank.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; ``OODPL_CHROMIUM`` may point at
another Chromium/Chrome binary). A missing browser FAILS this test: it is an acceptance check.
The page is copied alone into an empty directory first, so any reference to a file next to
report.html would break it; a probe script appended to the copy records, after the load event,
how many <img> elements decoded (naturalWidth > 0), read back with ``--dump-dom``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodpl.cli.run_dir import RunDir

pytestmark = pytest.mark.browser

INSTALL_HINT = "install it with: apt-get install -y --no-install-recommends chromium"
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded));
});
</script>
"""
WIDTH, HEIGHT = 1280, 3000


def chromium_binary() -> str:
    candidates = [os.environ.get("OODPL_CHROMIUM", "")]
    candidates += ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
    for name in candidates:
        if name and shutil.which(name):
            return str(shutil.which(name))
    pytest.fail(f"headless Chromium is required for the HTML report test; {INSTALL_HINT}")


def run_chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def isolated_report(reported_run: RunDir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html copied alone into an empty directory."""
    target = tmp_path_factory.mktemp("isolated") / "report.html"
    shutil.copyfile(reported_run.path / "report.html", target)
    return target


def test_every_image_loads_in_headless_chromium(isolated_report: Path, tmp_path: Path) -> None:
    probed = tmp_path / "probed.html"
    html = isolated_report.read_text(encoding="utf-8")
    assert html.count("</body>") == 1
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = run_chromium(tmp_path, probed.as_uri(), "--dump-dom", "--virtual-time-budget=10000")
    total = re.search(r'data-images-total="(\d+)"', done.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', done.stdout)
    assert total and loaded, "the load event never fired: " + done.stdout[:500]
    assert int(total.group(1)) == html.count("<img ") == 5
    assert int(loaded.group(1)) == int(total.group(1))


def test_screenshot_is_not_blank_and_shows_the_plots(isolated_report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    run_chromium(
        tmp_path,
        isolated_report.as_uri(),
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
        "--virtual-time-budget=10000",
    )
    with Image.open(io.BytesIO(shot.read_bytes())) as image:
        pixels = np.asarray(image.convert("RGB")).astype(np.int32)
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 200  # text, tables and anti-aliased plots
    ink = float((pixels.min(axis=2) < 200).mean())
    assert ink > 0.03, f"only {ink:.1%} of the page is non-white"
    # Text and table borders are grey; colour (saturation) comes from the embedded plots.
    colourful = float(((pixels.max(axis=2) - pixels.min(axis=2)) > 80).mean())
    assert colourful > 0.01, f"only {colourful:.2%} colourful pixels: plots did not render"
