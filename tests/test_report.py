"""The HTML report: one file, images inlined, the diagnostics table holding the DataTree's numbers, the flags in
words; a loaded result without a generator is reported without images, and the page says so."""

import base64
import html
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import bayestrex as bt
from bayestrex.cli import main


def tiny(target: str, seed: int = 0) -> bt.Result:
    """A short chees run on the digits models (starting points polished briefly, to keep the test fast)."""
    vae, clf = bt.nets.pretrained("digits", progress=False)
    init = bt.Posterior(vae.decoder, clf, target).initial_points(4, seed=seed, optimize_steps=5)
    return bt.sample(vae.decoder, clf, target, num_chains=4, num_samples=20, warmup=20, kernel="chees", seed=seed,
                     progress=False, init=init)


class Page(HTMLParser):
    """The parts of a report the tests read: images (src), and per table class its rows of (text, data-value)."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.tables, self._table, self._cell, self.sections = [], {}, None, None, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ["", a.get("data-value")]
        elif tag == "section":
            self.sections.append(a["id"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def _png(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.fixture(scope="module")
def result():
    return tiny("ambiguous:3,8")


def test_one_run_report_inlines_its_figures_and_holds_the_datatree_numbers(result, tmp_path):
    path = result.report(tmp_path / "r.html")
    text = path.read_text()
    page = Page(text)
    assert page.sections == ["run-0"] and "src=\"http" not in text and "<link" not in text  # nothing outside
    assert len(page.images) == 3 and all(_png(u) for u in page.images)  # draws, statistics, trace
    # the summary table: every cell is the DataTree's number (full precision in data-value, 4 digits shown)
    df = bt.diagnostics.summary(result.to_datatree())
    header, *rows = page.tables["summary"]
    cols = [h for h, _ in header]
    assert cols[:6] == ["variable", "mean", "sd", "ess_bulk", "ess_tail", "r_hat"]
    assert [r[0][0] for r in rows] == list(df.index)
    for row in rows:
        for (shown, value), col in zip(row[1:], cols[1:]):
            truth = float(df.loc[row[0][0], col])
            if math.isnan(truth):
                assert shown == "–" and value is None
            else:
                assert float(value) == truth and shown == f"{truth:.4g}"
    # the checks table: the overview's figures with their verdict in words
    o = bt.diagnostics.overview(result)
    checks = {r[0][0]: r for r in page.tables["checks"][1:]}
    assert float(checks["max R-hat"][1][1]) == o["max_r_hat"]
    assert float(checks["min bulk ESS"][1][1]) == o["min_ess_bulk"]
    assert float(checks["attainment"][1][1]) == o["attainment"]
    assert checks["max R-hat"][3][0].startswith("problem: not converged" if o["max_r_hat"] > 1.01 else "ok:")
    assert checks["min E-BFMI"][3][0].startswith(("ok", "problem"))  # chees records the energy
    for flag in result.diagnose():  # every flag, in words
        assert f"<li>{html.escape(flag)}</li>" in text
    settings = dict((r[0][0], r[1][0]) for r in page.tables["settings"][1:])
    assert settings["target"] == "ambiguous:3,8" and settings["kernel"] == "chees" and settings["chains"] == "4"


def test_a_loaded_result_without_its_generator_is_reported_without_images(result, tmp_path):
    result.save(tmp_path / "r.nc")
    loaded = bt.load(tmp_path / "r.nc")
    text = loaded.report(tmp_path / "no-images.html").read_text()
    assert "no images: this result has no generator" in text
    assert len(Page(text).images) == 2  # statistics and trace only
    # a generator whose output is not an image is reported as such
    flat = loaded.report(tmp_path / "flat.html", generator=lambda z: z.sum(-1, keepdim=True))
    assert "is not an image" in flat.read_text()


@pytest.fixture(scope="module")
def two_runs(result, tmp_path_factory):
    """A report of two runs: ``(path, results)``."""
    other = tiny("high:0")
    path = tmp_path_factory.mktemp("two") / "two.html"
    bt.report.write([result, other], path, extra=[{"seed": 0}, {"seed": 0}])
    return path, [result, other]


def test_several_runs_get_a_sortable_index_with_thumbnails_linking_to_their_sections(two_runs):
    path, (result, other) = two_runs
    text = path.read_text()
    page = Page(text)
    assert page.sections == ["run-0", "run-1"] and 'class="sortable index"' in text
    assert '<a href="#run-0">ambiguous:3,8</a>' in text and '<a href="#run-1">high:0</a>' in text
    header, *rows = page.tables["sortable index"]
    cols = [h for h, _ in header]
    assert cols[:3] == ["run", "seed", "draws"] and len(rows) == 2
    for row, r in zip(rows, (result, other)):
        o = bt.diagnostics.overview(r)
        got = {c: v for c, (_, v) in zip(cols, row)}
        assert float(got["attainment"]) == o["attainment"] and float(got["max_r_hat"]) == o["max_r_hat"]
    thumbs = [u for u in page.images if len(_png(u)) < 2000]  # 4 draws of 8x8 pixels
    assert len(thumbs) == 2 and len(page.images) == 2 + 2 * 3


def test_log_evidence_is_shown_when_the_result_has_independent_runs():
    """A hand-made SMC-like result: two runs of two particles with log Z = -3 and -3.2 (pooled: log-mean-exp)."""
    z = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(0))
    probs = torch.full((4, 5, 2), 0.5)
    res = bt.Result(z=z, probs=probs, u=probs[..., :1], stats={"diverging": torch.zeros(4, 5, dtype=torch.bool)},
                    target="high:0", sigma=0.05, groups={"smc": {"run": np.array([0, 0, 1, 1]),
                                                                 "log_evidence_runs": np.array([-3.0, -3.2])}})
    page = Page(bt.report.html_page(res))
    checks = {r[0][0]: r for r in page.tables["checks"][1:]}
    assert float(checks["log evidence"][1][1]) == pytest.approx(np.log((np.exp(-3.0) + np.exp(-3.2)) / 2))
    assert "standard error over the independent runs" in checks["log evidence"][3][0]
    assert "max nested R-hat (independent runs)" in checks


def test_bad_report_arguments_raise_one_clear_error(result):
    with pytest.raises(ValueError, match="at least one Result"):
        bt.report.html_page([])
    with pytest.raises(ValueError, match="names must have one entry per result"):
        bt.report.html_page([result, result], names=["a"])


def test_the_report_command_reads_result_files_and_finds_the_generator(result, tmp_path, capsys):
    result.save(tmp_path / "a.nc")
    assert main(["report", str(tmp_path / "a.nc"), "--out", str(tmp_path / "a.html")]) == 0
    cap = capsys.readouterr()
    assert "1 of 1 runs have no generator" in cap.err and "wrote" in cap.out
    assert "no images" in (tmp_path / "a.html").read_text()
    assert main(["report", str(tmp_path / "a.nc"), "--dataset", "digits", "--generator", "vae",
                 "--out", str(tmp_path / "b.html")]) == 0
    page = Page((tmp_path / "b.html").read_text())
    assert len(page.sections) == 1 and len(page.images) == 3
    assert main(["report", str(tmp_path / "missing.nc"), "--out", str(tmp_path / "c.html")]) == 2
    assert re.search(r"bayestrex report: error: no result file", capsys.readouterr().err)


# -- in a real browser -------------------------------------------------------------------------------------------
def _chromium():
    import os

    import browser

    exe = browser.find()
    if exe is None:
        message = ("chromium not found: the browser test needs Debian's chromium (run `make browser`, or set "
                   "BAYESTREX_CHROMIUM to a Chromium executable)")
        if os.environ.get("BAYESTREX_REQUIRE_BROWSER"):  # CI sets it: there a missing browser is a failure
            pytest.fail(message)
        pytest.skip(message)
    return browser.Browser(exe, width=1280, height=1000)


def test_the_report_in_headless_chromium_decodes_every_image_logs_no_error_and_sorts(two_runs):
    path, results = two_runs
    with _chromium() as b:
        b.open(path)
        widths = b.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 2 + 2 * 3 and min(widths) > 0, widths
        # the tables as the browser renders them hold the DataTree's numbers
        shown = b.evaluate("""Array.from(document.querySelectorAll('section')).map(s =>
            Array.from(s.querySelectorAll('table.summary tbody tr')).map(r =>
                Array.from(r.cells).map(c => c.textContent)))""")
        for rows, r in zip(shown, results):
            df = bt.diagnostics.summary(r.to_datatree())
            assert [row[0] for row in rows] == list(df.index)
            for row in rows:
                for text, col in zip(row[1:6], ["mean", "sd", "ess_bulk", "ess_tail", "r_hat"]):
                    v = float(df.loc[row[0], col])
                    assert text == ("–" if math.isnan(v) else f"{v:.4g}"), (row[0], col, text, v)
        index_col = "Array.from(document.querySelectorAll('table.index tbody tr')).map(r => r.cells[0].textContent)"
        order = [r.target_spec for r in sorted(results, key=lambda r: bt.diagnostics.overview(r)["max_r_hat"])]
        click = ("Array.from(document.querySelectorAll('table.index th'))"
                 ".find(th => th.textContent === 'max_r_hat').click()")
        b.evaluate(click)  # ascending
        assert b.evaluate(index_col) == order
        b.evaluate(click)  # descending
        assert b.evaluate(index_col) == order[::-1]
        b.evaluate("document.querySelector('table.index a[href=\"#run-1\"]').click()")
        assert b.evaluate("location.hash") == "#run-1" and b.evaluate("window.scrollY") > 0
        assert b.errors == []
        b.evaluate("console.error('probe')")  # and the error channel is live
        assert b.errors == ["console.error: probe"]
