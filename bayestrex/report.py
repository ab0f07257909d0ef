"""One self-contained HTML report of one run or many (a sweep): no server, no files beside it.

Per run: the target and settings; the image grid of draws (a draw outside the tolerance has a red title); the
histogram of each statistic against its target and tolerance; trace and rank plots (all from :mod:`bayestrex.plots`,
inlined as base64 PNG); the diagnostics in words (R-hat, bulk/tail ESS, divergences, E-BFMI, failed and stuck chains,
attainment, log-evidence when present) and the ArviZ summary table, every number read from the result's DataTree
(:mod:`bayestrex.diagnostics`). With several runs an index table comes first: one row per run with a thumbnail of
its draws, sortable by clicking a column, each row linking to the run's section.

A loaded result has no generator: pass it (``generators=``) to show images; without one the report says so and
shows the rest.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import numpy as np

from . import diagnostics, plots
from .io import atomic_path

__all__ = ["write", "html_page", "diagnostic_checks"]

_SUMMARY_COLUMNS = ("mean", "sd", "ess_bulk", "ess_tail", "r_hat", "target", "within_tol")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1180px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.25em;border-top:2px solid #ddd;padding-top:.8em;margin-top:2em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.4em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:2px 7px;text-align:right;vertical-align:middle}
th{background:#f3f3f3}td.l,th.l{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#aaa}
.ok{color:#17612a}.bad{color:#a31515;font-weight:600}.na{color:#777}
figure{margin:.6em 0}figure img{max-width:100%}figcaption{font-size:12px;color:#555}
img.thumb{height:44px;image-rendering:pixelated}
.note{background:#fff6d6;border:1px solid #e6d38a;padding:.4em .7em}
ul.flags li{color:#a31515}
"""

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute("data-order") !== "asc";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-order"); });
      th.setAttribute("data-order", up ? "asc" : "desc");
      function key(row) {  // numbers by data-value, then text
        var cell = row.cells[col], v = cell.getAttribute("data-value");
        return v === null ? [1, cell.textContent.trim()] : [0, parseFloat(v)];
      }
      rows.sort(function (a, b) {
        var ka = key(a), kb = key(b), c = ka[0] - kb[0];
        if (c === 0) { c = ka[0] === 0 ? ka[1] - kb[1] : (ka[1] < kb[1] ? -1 : ka[1] > kb[1] ? 1 : 0); }
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


# -- small HTML helpers --------------------------------------------------------------------------------------------
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v) -> str:
    """A number as the tables show it: 4 significant digits; integers as they are; None/NaN as an en dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def _cell(v, cls: str = "") -> str:
    """A table cell; numbers carry their full value in ``data-value`` (what sorting and the tests read)."""
    attr = f' class="{cls}"' if cls else ""
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        f = float(v)
        if math.isfinite(f):
            attr += f' data-value="{f!r}"'
    return f"<td{attr}>{_e(_fmt(v))}</td>"


def _table(rows: list[dict], columns: list[str], *, cls: str = "", left: tuple = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{_e(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c), "l" if c in left else "") for c in columns) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _png(fig, dpi: int = 72) -> str:
    """``fig`` as a data URI (PNG); the figure is closed. (No ``bbox_inches="tight"``: it draws the figure twice.)"""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(uri: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


# -- diagnostics in words ------------------------------------------------------------------------------------------
def diagnostic_checks(result) -> list[dict]:
    """The diagnostics of one result as rows ``{check, value, threshold, verdict, ok}`` (``ok``: True, False, or
    None when the check does not apply), every value computed from its DataTree by :mod:`bayestrex.diagnostics`."""
    dt = diagnostics.as_tree(result)
    o = diagnostics.overview(dt)
    th = diagnostics.THRESHOLDS
    healthy = len(diagnostics.healthy_chains(dt))
    runs = diagnostics.run_labels(dt)
    smc = runs is not None and runs.max() >= 1
    groups = int(runs.max()) + 1 if smc else healthy
    rows = []

    def add(check, value, threshold, ok, good, bad):
        rows.append(dict(check=check, value=value, threshold=threshold, ok=ok,
                         verdict=good if ok else (bad if ok is False else "not applicable")))

    if smc:
        nr = o.get("nested_r_hat")
        add("max nested R-hat (independent runs)", nr, f"<= {th['r_hat']}", None if nr is None else nr <= th["r_hat"],
            "the independent runs agree", "the independent runs disagree: not converged")
    rhat = o["max_r_hat"]
    add("max R-hat", rhat, f"<= {th['r_hat']}", None if smc or healthy < 2 or not math.isfinite(rhat)
        else rhat <= th["r_hat"], "converged: the chains agree",
        "not converged: the chains disagree (run longer, or the level set has several regions)")
    need = th["ess_per_chain"] * groups
    for name, key in (("min bulk ESS", "min_ess_bulk"), ("min tail ESS", "min_ess_tail")):
        v = o[key]
        add(name, v, f">= {need} (100 per {'run' if smc else 'chain'})",
            None if not math.isfinite(v) else v >= need, "enough independent draws",
            "too few independent draws: means and quantiles are uncertain")
    add("divergent transitions", o["divergences"], "0", o["divergences"] == 0, "none",
        "the sampler may miss part of the posterior")
    b = diagnostics.bfmi(dt)
    add("min E-BFMI", None if b is None else min(b), f">= {th['bfmi']}", None if b is None else min(b) >= th["bfmi"],
        "momentum resampling explores the energy well", "momentum resampling explores the energy poorly")
    if b is None:
        rows[-1]["verdict"] = "not recorded by this kernel"
    add("failed chains", o["failed_chains"], "0", o["failed_chains"] == 0, "none",
        "some chains failed (NaN draws, left out of the summaries)")
    add("stuck chains", o["stuck_chains"], "0", o["stuck_chains"] == 0, "none", "some chains never moved")
    add("attainment", o["attainment"], f">= {th['attainment']}", o["attainment"] >= th["attainment"],
        "most draws hit the target within the tolerance", "few draws hit the target within the tolerance")
    stopped = dt.attrs.get("bayestrex_stopped")
    add("run finished", "no" if stopped else "yes", "yes", not stopped, "all draws were taken",
        f"partial run: {stopped}")
    ev = diagnostics.evidence(dt)
    if ev is not None:
        add("log evidence", ev["log_evidence"], "–", None, "", "")
        rows[-1]["verdict"] = f"± {ev['log_evidence_se']:.3g} (standard error over the independent runs)"
    return rows


def _checks_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        cls = "na" if r["ok"] is None else ("ok" if r["ok"] else "bad")
        word = "–" if r["ok"] is None else ("ok" if r["ok"] else "problem")
        body.append(f'<tr><td class="l">{_e(r["check"])}</td>{_cell(r["value"])}<td>{_e(r["threshold"])}</td>'
                    f'<td class="l {cls}">{word}: {_e(r["verdict"])}</td></tr>')
    return ('<table class="checks"><thead><tr><th class="l">check</th><th>value</th><th>threshold</th>'
            f'<th class="l">verdict</th></tr></thead><tbody>{"".join(body)}</tbody></table>')


# -- images --------------------------------------------------------------------------------------------------------
def _decode(result, generator):
    """``(images [C, D, ...] or None, why not)``: None when there is no generator or its output is not images."""
    if generator is None:
        return None, ("no images: this result has no generator (a loaded result does not keep it); pass the "
                      "generator, or the dataset's zoo model name on the command line, to show its draws")
    try:
        x = result.images(generator)
    except Exception as e:  # a generator that does not fit this result: report the rest
        return None, f"no images: the generator could not decode these draws ({type(e).__name__}: {e})"
    if x.dim() not in (4, 5) or (x.dim() == 5 and x.shape[2] not in (1, 3)):
        return None, f"no images: the generator's output {tuple(x.shape[2:])} is not an image"
    return x, ""


def _as_hw(img) -> np.ndarray:
    img = img.detach().cpu().clamp(0, 1)
    if img.dim() == 3:
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    return img.numpy()


def _thumbnail(result, images, n: int = 4) -> str:
    """A data URI: up to ``n`` draws in a row, attained draws first, from different chains."""
    import matplotlib.image

    att = result.attained
    order = [(c, d) for d in range(result.num_draws) for c in result.healthy_chains]
    picks = [p for p in order if att[p]][:n]
    picks += [p for p in order if not att[p]][: n - len(picks)]
    tiles = [_as_hw(images[c, d]) for c, d in picks]
    h = tiles[0].shape[0]
    gap = np.ones((h, 1) + tiles[0].shape[2:])
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, row, cmap="gray", vmin=0, vmax=1, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- one run -------------------------------------------------------------------------------------------------------
def _settings(result) -> list[dict]:
    info = result.info
    rows = [("target", result.target_spec),
            ("statistics (target value)", ", ".join(f"{n} = {float(v):.4g}"
                                                     for n, v in zip(result.statistic_names, result.target_value))),
            ("tolerance", result.tolerance), ("sigma", result.sigma), ("kernel", info.get("kernel", "?")),
            ("chains", result.num_chains), ("draws per chain", result.num_draws)]
    for key in ("warmup", "seed", "dataset", "generator", "classifier", "device", "grad_evals", "seconds"):
        if key in info:
            rows.append((key, info[key]))
    return [dict(setting=k, value=v) for k, v in rows]


def _run_section(i: int, name: str, result, images, why: str) -> str:
    dt = result.to_datatree()
    parts = [f'<section id="run-{i}"><h2>{_e(name)}</h2>',
             _table(_settings(result), ["setting", "value"], cls="settings", left=("setting", "value"))]
    parts.append("<h3>Diagnostics</h3>" + _checks_table(diagnostic_checks(dt)))
    flags = diagnostics.flags(dt)
    parts.append('<ul class="flags">' + "".join(f"<li>{_e(f)}</li>" for f in flags) + "</ul>" if flags
                 else '<p class="ok">no problems found</p>')
    parts.append("<h3>Draws</h3>")
    if images is None:
        parts.append(f'<p class="note">{_e(why)}</p>')
    else:
        fig = plots.image_grid(result, images=images)
        parts.append(_figure(_png(fig, dpi=96), f"draws of {name}", "draws spread over chains and iterations, "
                             "titled with their two most probable classes; a red title marks a draw outside the "
                             "tolerance"))
    parts.append(_figure(_png(plots.statistic_hist(result)), f"statistics of {name}",
                         "each target statistic over all draws: target (line) and ± tolerance (band)"))
    parts.append(_figure(_png(plots.trace(result)), f"trace of {name}",
                         "trace and rank histogram per chain and latent dimension: well-mixed chains overlap and "
                         "have flat rank histograms"))
    table = diagnostics.summary(dt)
    rows = [dict(variable=str(idx), **{c: (float(table.loc[idx, c]) if c in table.columns else None)
                                       for c in _SUMMARY_COLUMNS}) for idx in table.index]
    parts.append("<h3>Summary (ArviZ, healthy chains)</h3>"
                 + _table(rows, ["variable", *_SUMMARY_COLUMNS], cls="summary", left=("variable",)))
    return "".join(parts) + "</section>"


def _index_row(i: int, name: str, result, thumb: str | None, extra: dict) -> str:
    o = diagnostics.overview(result)
    cells = [f'<td class="l" data-value="{i}"><a href="#run-{i}">{_e(name)}</a></td>']
    cells += [_cell(v, "l" if isinstance(v, str) else "") for v in extra.values()]
    cells.append(f'<td><img class="thumb" src="{thumb}" alt="draws of {_e(name)}"></td>' if thumb
                 else '<td class="na">–</td>')
    for k in ("attainment", "max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences", "failed_chains"):
        v = o[k]
        bad = ((k == "max_r_hat" and not v <= diagnostics.THRESHOLDS["r_hat"])
               or (k in ("divergences", "failed_chains") and v > 0)
               or (k == "attainment" and not v >= diagnostics.THRESHOLDS["attainment"]))
        cells.append(_cell(v, "bad" if bad else ""))
    flags = diagnostics.flags(result)
    cells.append(f'<td data-value="{len(flags)}">{len(flags)}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


# -- the page ------------------------------------------------------------------------------------------------------
def html_page(results, *, generators=None, names=None, extra=None, title: str | None = None) -> str:
    """The report as an HTML string.

    ``results``: a :class:`~bayestrex.Result` or a list of them. ``generators``: one callable for all, or a list
    (one per result, ``None`` allowed), or None to use each result's own (``result.generator``). ``names``: a heading
    per run (default: the target). ``extra``: one dict per run of columns for the index table (a sweep's key:
    dataset, generator, sigma, seed ...). ``title``: the page title.
    """
    results = [results] if not isinstance(results, (list, tuple)) else list(results)
    if not results:
        raise ValueError("results must hold at least one Result")
    n = len(results)
    if generators is None or callable(generators) or not isinstance(generators, (list, tuple)):
        generators = [generators] * n
    generators = [g if g is not None else r.generator for g, r in zip(generators, results)]
    names = list(names) if names is not None else [r.target_spec for r in results]
    extra = list(extra) if extra is not None else [{} for _ in results]
    for arg, values in (("generators", generators), ("names", names), ("extra", extra)):
        if len(values) != n:
            raise ValueError(f"{arg} must have one entry per result ({n}), got {len(values)}")
    title = title or (f"bayestrex report: {names[0]}" if n == 1 else f"bayestrex report: {n} runs")

    sections, index_rows, missing = [], [], 0
    for i, (result, gen, name, ex) in enumerate(zip(results, generators, names, extra)):
        images, why = _decode(result, gen)
        missing += images is None
        sections.append(_run_section(i, name, result, images, why))
        if n > 1:
            thumb = _thumbnail(result, images) if images is not None else None
            index_rows.append(_index_row(i, name, result, thumb, ex))
    head = [f"<h1>{_e(title)}</h1>",
            f"<p>{n} run{'s' if n > 1 else ''}; diagnostics as in <code>bayestrex.diagnostics</code>: "
            f"converged means R-hat &le; {diagnostics.THRESHOLDS['r_hat']}; attainment is the fraction of draws "
            "with every statistic within the tolerance of its target.</p>"]
    if missing:
        head.append(f'<p class="note">{missing} of {n} runs are shown without images (no generator).</p>')
    if n > 1:
        cols = ["run", *extra[0].keys(), "draws", "attainment", "max_r_hat", "min_ess_bulk", "min_ess_tail",
                "divergences", "failed_chains", "problems"]
        th = "".join(f'<th class="{"l" if c == "run" else ""}">{_e(c)}</th>' for c in cols)
        head.append("<h2>Runs</h2><p>Click a column to sort; a run's name links to its section.</p>"
                    f'<table class="sortable index"><thead><tr>{th}</tr></thead>'
                    f'<tbody>{"".join(index_rows)}</tbody></table>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
            + "".join(head) + "".join(sections) + f"<script>{_SORT_JS}</script></body></html>\n")


def write(results, path: str | os.PathLike, **options) -> Path:
    """Write :func:`html_page` to ``path`` atomically (one file, images inlined); return the path."""
    page = html_page(results, **options)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
