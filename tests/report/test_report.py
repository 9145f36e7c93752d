"""`samsr report` on a real refine output (local Ray, a random tiny refiner): the files, the
ranking, the overlays' contours, and the page in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import cv2
import pytest

from jobs.cli import main as cli_main
from pipeline.config import config_from_dict
from pipeline.io import read_manifest
from pipeline.report import rank_samples
from pipeline.report.overlay import COLOURS, make_overlay
from pipeline.runner.refine import run_refine
from tests.helpers import make_sample, make_samples, write_layout

USES_S3 = True  # the module's Ray starts after the S3 endpoint's variables are set


@pytest.fixture(scope="module")
def refined(tmp_path_factory, crm_checkpoint, local_ray) -> str:
    """A refine output of 3 WebDataset shards: 7 samples with ground truth (two of them
    1800x1200) and 2 corrupt ones (non-image bytes, an empty file)."""
    root = tmp_path_factory.mktemp("report")
    samples = make_samples(5, 96, 128) + make_samples(2, 1200, 1800, prefix="big")
    samples[1:1] = [dict(make_sample("broken"), image_bytes=b"not an image"),
                    dict(make_sample("empty"), image_bytes=b"")]
    uri = write_layout("webdataset", str(root / "in"), samples, per_shard=3)
    out = str(root / "out")
    cfg = config_from_dict({"input": {"uri": uri, "layout": "webdataset"}, "output": {"prefix": out},
                            "model": {"name": "crm_mnv2", "checkpoint": crm_checkpoint},
                            "refine": {"options": {"scales": [1.0]}}, "ray": {"progress": False}})
    run_refine(cfg)
    return out


def test_report_files_table_and_ranking(refined, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["report", refined, "--out", str(out), "--worst", "2", "--best", "2", "--no-progress"]
    assert cli_main(args) == 0
    assert capsys.readouterr().out.strip().endswith("index.html")
    page = (out / "index.html").read_text()
    rows = read_manifest(refined).to_pylist()
    assert "ok 7, error 2, skipped 0" in page
    worst, best, how = rank_samples(rows, 2, 2)
    assert how.startswith("mBA gain") and len(worst) == len(best) == 2
    gains = sorted((r["mba_refined"] - r["mba_coarse"], r["key"]) for r in rows if r["status"] == "ok")
    assert [r["key"] for r in worst] == [k for _, k in gains[:2]]
    assert [r["key"] for r in best] == [k for _, k in gains[::-1][:2]]
    for r in (*worst, *best):
        assert r["key"] in page
    assert page.count('class="thumb"') == 4 and "http" not in page.replace("http-equiv", "")
    for src in re.findall(r'src="([^"]+)"', page):
        assert (out / src).exists() and "/" not in src, src
    assert "<h3>decode_error (2)</h3>" in page and "empty file (0 bytes)" in page
    shards = sorted({r["shard"] for r in rows})
    assert len(shards) == 3 and "<h2>Per shard</h2>" in page
    for shard in shards:  # one row per shard: samples, ok, error
        n = [r for r in rows if r["shard"] == shard]
        ok = sum(r["status"] == "ok" for r in n)
        assert f"<tr><td>{shard}</td><td>{len(n)}</td><td>{ok}</td><td>{len(n) - ok}</td>" in page
    big = next(iter(sorted(out.glob("s*.jpg"))))
    assert max(cv2.imread(str(big)).shape[:2]) <= 480


def test_without_ground_truth_the_least_trusted_are_the_worst():
    rows = [{"key": k, "status": "ok", "trust_score": s, "change_iou": c}
            for k, s, c in (("a", 0.9, 0.5), ("b", 0.1, 0.99), ("c", 0.5, 0.7), ("d", None, 0.1))]
    worst, best, how = rank_samples(rows, 1, 1)
    assert how.startswith("trust score")
    assert [r["key"] for r in worst] == ["b"] and [r["key"] for r in best] == ["a"]
    _, _, how = rank_samples([{**r, "trust_score": None} for r in rows], 1, 1)
    assert how.startswith("change")


def test_report_to_s3(refined, s3_bucket):
    from pipeline.io import open_fs, read_bytes
    from pipeline.report import build_report

    index = build_report(refined, f"{s3_bucket}/reports/r1", worst=1, best=1, progress=False)
    assert index == f"{s3_bucket}/reports/r1/index.html"
    page = read_bytes(index).decode()
    fs, base = open_fs(f"{s3_bucket}/reports/r1")
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)}
    assert set(re.findall(r'src="([^"]+)"', page)) <= names and "stages.png" in names


def test_overlay_draws_each_contour_in_its_colour(refined):
    row = next(r for r in read_manifest(refined).to_pylist() if r["key"] == "big000")
    uris = {"coarse": row["mask_uri"], "refined": row["output_uri"], "gt": row["gt_uri"]}
    size = (row["width"], row["height"])
    for name, colour in COLOURS.items():  # each mask alone: its contour in its colour
        alone = make_overlay(row["image_uri"], {name: uris[name]}, size, thumb=300).thumb
        assert (alone == colour).all(axis=2).sum() > 50, f"{name} contour missing"
    ov = make_overlay(row["image_uri"], uris, size, thumb=300)
    assert ov.thumb.shape == (200, 300, 3)
    assert (ov.thumb == COLOURS["refined"]).all(axis=2).sum() > 50, "refined is drawn on top"
    assert ov.zoom is not None and max(ov.zoom.shape[:2]) == 320
    x0, y0, x1, y1 = ov.zoom_box
    assert 0 <= x0 < x1 <= 1800 and 0 <= y0 < y1 <= 1200


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if shutil.which("apt-get"):
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                           capture_output=True, text=True, timeout=600,
                           env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        exe = shutil.which("chromium")
        if exe:
            return exe
        pytest.skip(f"chromium is not installed and apt-get could not install it: {r.stderr[-300:]}")
    pytest.skip("chromium is not installed and there is no apt-get to install it")


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-check', JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src')),
    rows: [...document.querySelectorAll('table.facts td')].map(td => td.textContent)}));
});
</script>"""


def test_report_in_a_headless_browser(refined, tmp_path):
    exe = _chromium()
    out = tmp_path / "rep"
    args = ["report", refined, "--out", str(out), "--worst", "3", "--best", "3", "--no-progress"]
    assert cli_main(args) == 0
    page = out / "index.html"
    probe = out / "probe.html"  # the report plus a probe that reads what the browser loaded
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    check = json.loads(re.search(r"data-check=\"([^\"]+)\"", dom.stdout).group(1).replace("&quot;", '"'))
    assert check["images"] >= 6 + 2 and check["broken"] == [], check
    manifest = read_manifest(refined).to_pylist()
    ok = sum(r["status"] == "ok" for r in manifest)
    assert f"{len(manifest)}: ok {ok}, error {len(manifest) - ok}, skipped 0" in check["rows"]
    shot = tmp_path / "report.png"  # kept as the test's artifact
    r = subprocess.run([exe, *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img.shape[:2] == (1600, 1200) and img.std() > 10, "the screenshot is blank"


def test_the_cards_say_what_the_acceptance_policy_wrote():
    from pipeline.report.build import kept_text

    assert kept_text({"accepted": True, "accepted_share": 1.0}) == "refined kept"
    assert kept_text({"accepted": None}) == "refined kept"  # no policy
    assert kept_text({"accepted": False, "accepted_share": None}) == "coarse kept (see candidates/)"
    assert kept_text({"accepted": False, "accepted_share": 0.0}) == "coarse kept (see candidates/)"
    assert kept_text({"accepted": False, "accepted_share": 0.731}) == (
        "73% of the changed pixels kept (see candidates/)")
