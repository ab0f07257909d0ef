"""The ``bayestrex`` command: ``demo``, ``sample``, ``diagnose``, ``train``, ``sbc``, ``xgems``, ``cdeepex``,
``intervene``, ``sweep``, ``report``. Thin: it calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEMO_TARGETS = ("high:0", "ambiguous:3,8", "uniform", "graded:1,7,0.3")


def _write_table(rows: list[dict], out: Path, stem: str) -> str:
    from .io import atomic_path, markdown_table, write_json

    md = markdown_table(rows)
    with atomic_path(out / f"{stem}.md") as tmp:
        tmp.write_text(md + "\n")
    write_json(rows, out / f"{stem}.json")
    return md


def _sample_and_report(target, vae, clf, out: Path, args, prefix: str, **checkpointing) -> dict:
    """Sample one target, write its figures and result file, return its overview row."""
    import bayestrex as bt

    result = bt.sample(vae.decoder, clf, target, num_chains=args.chains, num_samples=args.samples,
                       warmup=_warmup(args), sigma=args.sigma, kernel=_kernel(args), seed=args.seed,
                       progress=not args.quiet, threads=args.threads, **checkpointing)
    result.info.update(dataset=args.dataset, generator="vae", classifier="classifier",  # for `bayestrex report`
                       models_sha256={n: m.meta.get("sha256") for n, m in (("vae", vae), ("classifier", clf))
                                      if hasattr(m, "meta")})
    result.save(out / f"{prefix}result.nc")  # the draws first: a figure that fails cannot lose them
    if checkpointing and not result.stopped:  # finished and saved: the checkpoint has served
        Path(checkpointing["checkpoint"]).unlink(missing_ok=True)
    try:
        bt.plots.image_grid(result, path=out / f"{prefix}images.png")
        bt.plots.statistic_hist(result, path=out / f"{prefix}statistics.png")
        bt.plots.trace(result, path=out / f"{prefix}trace.png")
    except Exception as e:  # noqa: BLE001 - any plotting failure: say where the draws are, in one line
        raise ValueError(f"the draws are saved in {out / f'{prefix}result.nc'}, but writing a figure failed: "
                         f"{type(e).__name__}: {e}") from e
    return bt.diagnostics.overview(result)


def _kernel(args):
    """The kernel named by --kernel, with the options that apply to it."""
    from .kernels import KERNELS
    from .kernels.chees import ChEES
    from .kernels.hmc import BatchedHMC
    from .kernels.pyro_nuts import PyroNUTS

    if args.kernel in ("nuts", "nuts-plate"):
        return PyroNUTS("plate" if args.kernel == "nuts-plate" else "independent",
                        max_tree_depth=args.max_tree_depth, full_mass=args.dense_mass)
    if args.kernel == "hmc":
        return BatchedHMC(max_steps=args.max_steps, dense_mass=True if args.dense_mass else None)
    if args.kernel == "chees":
        return ChEES(max_steps=args.max_steps)
    if args.kernel == "smc":
        from .kernels.smc import SMC

        return SMC(max_leapfrog=args.max_steps)
    if args.kernel not in KERNELS:  # argparse's choices already hold this; kept for programmatic callers
        raise ValueError(f"--kernel must be one of {sorted(KERNELS)}, got {args.kernel!r}")
    return args.kernel


def _warmup(args) -> int | None:
    """--warmup, or its default: the command's for MCMC kernels, the kernel's own for smc."""
    if args.warmup is not None:
        return args.warmup
    return None if args.kernel == "smc" else args.default_warmup


def _setup(args):
    import torch

    import bayestrex as bt

    if args.threads:
        torch.set_num_threads(args.threads)
    return bt.nets.pretrained(args.dataset, directory=args.weights_dir, data_root=args.data_root,
                              progress=not args.quiet)


def _demo_target(args, target: str) -> dict:
    """One demo target in a worker process: load the models, sample, write figures, return the table row."""
    import bayestrex as bt

    vae, clf = _setup(args)
    slug = target.replace(":", "_").replace(",", "_")
    row = _sample_and_report(target, vae, clf, Path(args.out), args, prefix=f"{slug}-")
    if bt.load(Path(args.out) / f"{slug}-result.nc").stopped == "interrupted":
        raise KeyboardInterrupt  # Ctrl-C in this process: the driver kept a partial result; the rest is cancelled
    return row


def cmd_demo(args) -> int:
    from .io import clean_temp_files, run_folder

    with run_folder(args.out, "--out") as out:  # checked and locked before any sampling
        done: list[str] = []
        try:
            return _demo(args, done)
        except KeyboardInterrupt:  # Ctrl-C: queued targets cancelled, running ones stopped, one line
            clean_temp_files(out)
            left = len(args.targets) - len(done)
            print(f"bayestrex demo: interrupted: {len(done)} of {len(args.targets)} targets finished"
                  + (f" ({', '.join(done)}; their files are in {out}/)" if done else "")
                  + f"; the other {left} were stopped or cancelled", file=sys.stderr)
            return 130


def _demo_worker_init() -> None:
    """In each demo worker: tqdm's write lock as a thread lock. Its default is a multiprocessing lock, a named
    semaphore made at the first (even disabled) progress bar, which a worker stopped by Ctrl-C (``Pool.terminate``)
    never releases, so the resource tracker printed a "leaked semaphore" warning after the one-line message."""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _demo_in_processes(args, jobs: int, done: list[str]) -> list[dict]:
    """The demo targets in ``jobs`` spawned processes (torch single-threaded in each, no forked thread pools).

    The workers ignore SIGINT: Ctrl-C reaches this process only, which then drops the queued targets and stops the
    running ones (``Pool.terminate``) before anything else is written. ``done`` collects the finished targets."""
    import multiprocessing
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None  # inherited by the workers
    try:
        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_demo_worker_init)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)
    jobs_ = [pool.apply_async(_demo_target, (args, t)) for t in args.targets]
    try:
        rows = [job.get() for job in jobs_]
        pool.close()
        return rows
    finally:
        done[:] = [t for t, job in zip(args.targets, jobs_) if job.ready() and job.successful()]
        pool.terminate()  # a no-op after close() and a clean finish; else cancels and stops the rest
        pool.join()


def _demo(args, done: list[str]) -> int:
    t0 = time.perf_counter()
    jobs = max(1, min(args.jobs, len(args.targets)))
    if jobs == 1:
        rows = []
        for target in args.targets:
            rows.append(_demo_target(args, target))
            done.append(target)
    else:
        if not args.quiet:
            print(f"sampling {len(args.targets)} targets in {jobs} processes ...", flush=True)
        args.quiet = True
        rows = _demo_in_processes(args, jobs, done)
    out = Path(args.out)
    md = _write_table(rows, out, "summary")
    print(md)
    import bayestrex as bt

    vae, _ = _setup(args)
    results = [bt.load(out / f"{t.replace(':', '_').replace(',', '_')}-result.nc") for t in args.targets]
    bt.report.write(results, out / "report.html", generators=vae.decoder, title=f"bayestrex demo: {args.dataset}")
    print(f"\nwrote figures, results, summary.md and report.html to {out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


#: a run folder's record of the arguments of `bayestrex sample` (what --resume reruns) and its checkpoint file
RUN_ARGS, CHECKPOINT = "run.json", "checkpoint.pt"
#: kernels whose runs `bayestrex sample` checkpoints (the others keep state a checkpoint cannot hold)
RESUMABLE = ("hmc", "chees", "slice", "mh", "constrained", "mmala")


def cmd_sample(args) -> int:
    from .io import run_folder

    if args.resume is None and (args.target is None or args.out is None):
        raise ValueError("--target and --out are required (or --resume RUN to continue a run)")
    if args.resume is not None:
        args = _resumed_args(args)
    with run_folder(args.out, "--out") as out:  # checked and locked before any sampling
        return _sample_into(args, out)


def _resumed_args(args):
    """The arguments of the run in ``args.resume`` (its run.json), to continue it; --quiet may be given anew."""
    run = Path(args.resume)
    saved = run / RUN_ARGS
    if not saved.is_file():
        raise ValueError(f"--resume {run}: no {RUN_ARGS} there (not a folder written by bayestrex sample --out)")
    if args.target is not None or args.out not in (None, str(run)):
        raise ValueError("--resume takes its target, folder and settings from the run; do not pass --target or --out")
    try:
        resumed = argparse.Namespace(**json.loads(saved.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"--resume {run}: {saved} cannot be read: {e}") from None
    if not (run / CHECKPOINT).exists() and (run / "result.nc").exists():
        import bayestrex as bt

        if not bt.load(run / "result.nc").stopped:
            raise ValueError(f"--resume {run}: that run finished; its result is {run / 'result.nc'}")
    resumed.quiet, resumed.resume, resumed.out, resumed.func = args.quiet, str(run), str(run), args.func
    return resumed


def _sample_into(args, out: Path) -> int:
    from .io import write_json

    checkpointing = {}
    if args.kernel in RESUMABLE:
        checkpointing = dict(checkpoint=out / CHECKPOINT, checkpoint_every=args.checkpoint_every,
                             keep_checkpoint=True)
        if args.resume is not None:
            checkpointing["resume"] = out / CHECKPOINT
    if args.resume is None:
        write_json({k: v for k, v in vars(args).items() if k != "func"}, out / RUN_ARGS)
    vae, clf = _setup(args)
    row = _sample_and_report(args.target, vae, clf, out, args, prefix="", **checkpointing)
    print(_write_table([row], out, "summary"))
    import bayestrex as bt

    result = bt.load(out / "result.nc")
    _print_summary(result)
    if result.stopped:
        print(f"\n{result.stopped}: kept {result.num_draws} of {args.samples} draws per chain in {out}/result.nc "
              "(marked partial)" + (f"; continue with: bayestrex sample --resume {out}" if checkpointing else ""),
              file=sys.stderr)
        return 130 if result.stopped == "interrupted" else 1
    print(f"\nwrote result.nc, images.png, statistics.png, trace.png and summary.md to {out}/")
    return 0


def _print_summary(result) -> None:
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        cols = ["mean", "sd", "ess_bulk", "ess_tail", "r_hat", "target", "within_tol"]
        print(result.summary()[cols].round(3).to_string())
    flags = result.diagnose()
    print("\n" + ("\n".join(f"WARNING: {f}" for f in flags) if flags else "no problems found"))


def cmd_diagnose(args) -> int:
    import bayestrex as bt

    result = bt.load(args.result)
    print(result)
    _print_summary(result)
    return 1 if args.strict and bt.diagnostics.flags(result) else 0


def cmd_train(args) -> int:
    import bayestrex as bt

    names = args.models
    if names == ["all"]:
        names = ["vae", "classifier", "gan", "classifier-split", "vae-split"] + [f"vae-without-{c}" for c in range(10)]
    for n in names:
        bt.nets.recipe(args.dataset, n)  # unknown datasets and names fail here, before anything is said or trained
    folder = bt.nets.weights_dir(args.weights_dir) / args.dataset
    existing = [n for n in names if (folder / f"{n}.pt").exists()]
    if existing and not args.overwrite:
        raise ValueError(f"weights for {', '.join(existing)} already exist in {folder} (the README's numbers come from "
                         "the shipped ones); pass --weights-dir/--out FOLDER to train into another folder, or "
                         "--overwrite to replace them")
    for n in names:
        print(f"bayestrex train: training {args.dataset}/{n} into {folder / f'{n}.pt'}", file=sys.stderr, flush=True)
    figures = bt.nets.train(args.dataset, names, directory=args.weights_dir, data_root=args.data_root,
                            progress=not args.quiet)
    print(json.dumps(figures, indent=2))
    return 0


def _explained_input(args):
    """``(generator, encoder, classifier, x [1, ...], label or None, class names)`` for xgems / cdeepex."""
    import torch

    import bayestrex as bt

    from .cli_checks import read_image

    torch.set_num_threads(args.threads)
    img = None if args.image is None else read_image(args.image)  # before the models: a bad file fails at once
    get = lambda name: bt.nets.get(args.dataset, name, directory=args.weights_dir,  # noqa: E731
                                   data_root=args.data_root, progress=not args.quiet)
    gen_model, clf = get(args.generator), get("classifier")
    shape = tuple(gen_model.config["image_shape"])
    if img is not None:
        if (1, *img.shape) != shape:
            raise ValueError(f"--image {args.image} is {tuple(img.shape)} pixels; the {args.dataset} models expect "
                             f"{shape[1:]} (grayscale)")
        x, label = img.view(1, *shape), None
    else:
        images, labels = bt.data.load(args.dataset, "test", root=args.data_root)
        if not 0 <= args.index < len(images):
            raise ValueError(f"--index must be in [0, {len(images) - 1}] (the {args.dataset} test split), "
                             f"got {args.index}")
        x, label = images[args.index:args.index + 1], int(labels[args.index])
    encoder = gen_model.encoder if args.generator == "vae" else None
    return gen_model.generator, encoder, clf, x, label, bt.data.CLASS_NAMES[args.dataset]


def _second_class(clf, x) -> tuple[int, int]:
    import torch

    with torch.no_grad():
        top = clf(x).softmax(-1)[0].topk(2).indices.tolist()
    return top[0], top[1]


def cmd_xgems(args) -> int:
    import torch

    import bayestrex as bt

    from .io import write_json

    gen, enc, clf, x, label, names = _explained_input(args)
    pred, second = _second_class(clf, x)
    target = second if args.target is None else args.target
    if not 0 <= target < len(names):
        raise ValueError(f"--target must be a class index in [0, {len(names) - 1}], got {target}")
    res = bt.special.xgems(gen, clf, x, target, encoder=enc, sigma=args.sigma, prior_scale=args.prior_scale,
                           step=args.step, max_steps=args.max_steps)
    p = res.path
    n = int(p.length[0]) + 1
    with torch.no_grad():
        images = bt.special.Residual(gen, res.delta)(p.z[:n, 0])
    out = Path(args.out)
    bt.plots.walk(images, p.probs[:n, 0, target], p.distance[:n, 0], steepness=res.steepness[0],
                  midpoint=res.midpoint[0], switch=int(p.switch[0]), path=out / "xgems-path.png",
                  title=f"xGEMs: {names[pred]} -> {names[target]}")
    numbers = dict(label=label, predicted=pred, target=target, switched=bool(res.switched[0]),
                   switch_step=int(p.switch[0]), distance_at_switch=round(float(p.distance[int(p.switch[0]), 0]), 4)
                   if res.switched[0] else None, steps=n - 1, steepness=round(float(res.steepness[0]), 4),
                   midpoint=round(float(res.midpoint[0]), 4),
                   probs_at_xgem=[round(v, 4) for v in res.probs[0].tolist()])
    write_json(numbers, out / "xgems.json")
    print(json.dumps(numbers, indent=2))
    print(f"wrote xgems-path.png and xgems.json to {out}/")
    return 0


def cmd_cdeepex(args) -> int:
    import torch

    import bayestrex as bt

    from .io import write_json

    gen, enc, clf, x, label, names = _explained_input(args)
    pred, second = _second_class(clf, x)
    true = pred if args.true is None else args.true
    probe = second if args.probe is None else args.probe
    for name, v in (("--true", true), ("--probe", probe)):
        if not 0 <= v < len(names):
            raise ValueError(f"{name} must be a class index in [0, {len(names) - 1}], got {v}")
    res = bt.special.cdeepex(gen, clf, x, true, probe, encoder=enc, margin=args.margin, outer=args.outer,
                             inner=args.inner)
    out = Path(args.out)
    bt.plots.contrastive(x, res.images(gen), res.explanation(gen), path=out / "cdeepex.png",
                         title=f"why {names[true]}, not {names[probe]}? (red: ink {names[true]} needs; "
                               f"blue: ink {names[probe]} adds)")
    with torch.no_grad():
        images = bt.special.Residual(gen, res.delta)(res.path[:, 0])
        probs = clf(images).softmax(-1)
    bt.plots.walk(images, probs[:, probe], (res.path[:, 0] - res.z0[0]).norm(dim=-1), path=out / "cdeepex-path.png",
                  title=f"CDeepEx outer iterates: p({names[probe]}) on the way to the {names[true]}/{names[probe]} "
                        "boundary")
    numbers = dict(label=label, true=true, probe=probe, converged=bool(res.converged[0]),
                   outer_iterations=len(res.path) - 1, distance=round(float((res.z - res.z0).norm()), 4),
                   llh_true_minus_probe=round(float(res.h[-1, 0]), 5),
                   max_violation=round(float(res.max_violation[0]), 5),
                   most_probable_at_boundary=int(res.probs[0].argmax()),
                   probs_at_boundary=[round(v, 4) for v in res.probs[0].tolist()])
    write_json(numbers, out / "cdeepex.json")
    print(json.dumps(numbers, indent=2))
    print(f"wrote cdeepex.png, cdeepex-path.png and cdeepex.json to {out}/")
    return 0


def cmd_intervene(args) -> int:
    import torch

    import bayestrex as bt

    from . import intervention as iv
    from .io import write_json

    torch.set_num_threads(args.threads)
    get = lambda name: bt.nets.get(args.dataset, name, directory=args.weights_dir,  # noqa: E731
                                   data_root=args.data_root, progress=not args.quiet)
    images, labels = bt.data.load(args.dataset, "test", root=args.data_root)
    if not 0 <= args.index < len(images):
        raise ValueError(f"--index must be in [0, {len(images) - 1}] (the {args.dataset} test split), got {args.index}")
    names = bt.data.CLASS_NAMES[args.dataset]
    target = args.to if args.target is None else args.target
    if args.target is None and not 0 <= args.to < len(names):
        raise ValueError(f"--to must be a class index in [0, {len(names) - 1}], got {args.to}")
    clf, dvae, explainer = get("classifier"), get("dvae"), get("explainer")
    g, h = bt.nets.split(clf, dvae.meta["layer"])
    x = images[args.index:args.index + 1]
    with torch.no_grad():
        activation = g(x)
        predicted = int(clf(x).argmax(-1))
    codes = dvae.encode(activation)[0]
    res = iv.intervene(dvae, h, codes, target, flip_prob=args.flip_prob, sigma=args.sigma, num_chains=args.chains,
                       num_samples=args.samples, warmup=args.warmup, seed=args.seed, max_radius=args.max_radius,
                       progress=not args.quiet)
    shown = ([dict(res.minimal, share=None)] if res.minimal else []) + res.distinct(3)
    slug = f"to-{args.to}" if args.target is None else args.target.replace(":", "-").replace(",", "-")
    out = Path(args.out) if args.out else Path("intervene-output") / f"{args.dataset}-{args.index}-{slug}"
    if shown:
        from_g, from_c, from_new = iv.pictures(dvae, explainer, activation, codes, [a["codes"] for a in shown])
        rows = [("minimal" if a["share"] is None else f"draw ({a['share']:.0%} of hits)") + "\n"
                + iv.describe(a, names) for a in shown]
        bt.plots.intervention(x.expand(len(shown), *x.shape[1:]), from_g, from_c, from_new, labels=rows,
                              path=out / "intervention.png", title=f"{args.dataset} test #{args.index} "
                              f"(predicted {names[predicted]}) -> {res.result.target_spec}")
    bt.plots.concepts(res.change_frequency()[None].nan_to_num(0).numpy(), row_labels=[res.result.target_spec],
                      path=out / "intervention-latents.png",
                      title="share of the posterior draws reaching the target that change each latent")
    res.result.save(out / "result.nc")
    numbers = dict(dataset=args.dataset, index=args.index, label=int(labels[args.index]), predicted=predicted,
                   layer=dvae.meta["layer"], dvae={k: v for k, v in dvae.meta.items() if k.startswith("test_")},
                   **res.record(), top_draws=res.distinct(3), flip_prob=args.flip_prob,
                   chains=args.chains, samples=args.samples, warmup=args.warmup, sigma=args.sigma, seed=args.seed,
                   seconds=res.result.info.get("seconds"))
    write_json(numbers, out / "intervention.json")
    print(json.dumps({k: numbers[k] for k in ("label", "predicted", "target", "minimal", "diagnostics")}, indent=2))
    print(f"wrote intervention.png, intervention-latents.png, intervention.json and result.nc to {out}/")
    return 0


def cmd_sbc(args) -> int:
    """Simulation-based calibration of one kernel on one statistic: ranks, ECDF figure, verdict."""

    from .io import atomic_path, markdown_table, write_json
    from .sbc import plot, simulate

    out = Path(args.out)
    vae, clf = _setup(args)
    kernel = _kernel(args)
    t0 = time.perf_counter()
    res = simulate(vae.decoder, clf, args.statistic, kernel=kernel, sigma=args.sigma, replicates=args.replicates,
                   num_chains=args.chains, num_samples=args.samples, warmup=_warmup(args), draws=args.draws,
                   seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    seconds = round(time.perf_counter() - t0, 1)
    verdicts = res.verdicts()
    rows = [dict(quantity=res.names[q], verdict="pass" if v["passed"] else "FAIL", max_ecdf_gap=round(v["worst"], 3),
                 mean_rank=round(v["mean_rank"], 3), share_at_the_ends=round(v["edge_share"], 3))
            for q, v in verdicts.items()]
    diag = res.diagnostics
    summary = dict(verdict="pass" if all(v["passed"] for v in verdicts.values()) else "FAIL", seconds=seconds,
                   median_max_r_hat=float(sorted(d["max_r_hat"] for d in diag)[len(diag) // 2]),
                   median_attainment=float(sorted(d["attainment"] for d in diag)[len(diag) // 2]),
                   grad_evals=int(sum(d["grad_evals"] for d in diag)), dataset=args.dataset, **res.settings,
                   command="bayestrex " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("bayestrex") else None)
    plot(res, path=out / "sbc.png")
    write_json(dict(summary=summary, quantities=rows, ranks=res.ranks.tolist(), replicates=diag), out / "sbc.json")
    md = "\n".join([f"# SBC: {res.settings['kernel']} on {args.statistic}, sigma {args.sigma}", "",
                    markdown_table([summary]), "", markdown_table(rows)])
    with atomic_path(out / "sbc.md") as tmp:
        tmp.write_text(md + "\n")
    print(md)
    print(f"\nverdict: {summary['verdict']} ({len(diag)} replicates, ranks among {res.num_draws} draws; "
          f"{seconds} s); wrote sbc.png, sbc.json and sbc.md to {out}/")
    return 1 if args.strict and summary["verdict"] == "FAIL" else 0


def cmd_sweep(args) -> int:
    import bayestrex as bt

    sw = bt.sweep(args.spec, args.out, backend=args.backend, workers=args.workers, address=args.address,
                  retry_failed=args.retry_failed, progress=not args.quiet)
    print(sw.write_table())
    rows = sw.rows()
    done = sum(r["status"] == "done" for r in rows)
    print(f"\n{done} of {len(rows)} runs done ({len(sw.executed)} run now); index, table.md and runs/ in {sw.folder}/")
    if args.report:
        print(f"wrote {sw.report(weights_dir=args.weights_dir)}")
    if done < len(rows):
        print("some runs failed or were lost (index.md says why): rerun to redo lost runs, add --retry-failed to "
              "redo failed ones", file=sys.stderr)
        return 1
    return 0


def _report_inputs(paths: list[str]):
    """``(name, result, extra columns)`` for each RUN: a result file, a sweep folder, or a folder of result files."""
    import bayestrex as bt

    out = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "index.json").is_file():
            sw = bt.sweeps.Sweep.open(p)
            out += [(row["key"], r, {}) for row, r in sw.results()]
        elif p.is_dir():
            files = sorted(p.glob("*result.nc"))
            if not files:
                raise FileNotFoundError(f"{p} holds no result files (*result.nc) and is not a sweep folder")
            out += [(f"{bt.load(f).target_spec} ({f.name})", bt.load(f), {}) for f in files]
        else:
            out.append((f"{bt.load(p).target_spec} ({p.name})", bt.load(p), {}))
    if not out:
        raise ValueError("no finished runs to report")
    return out


def cmd_report(args) -> int:
    import bayestrex as bt

    items = _report_inputs(args.runs)
    gens = [bt.sweeps.generator_for(r, dataset=args.dataset, name=args.generator, weights_dir=args.weights_dir)
            for _, r, _ in items]
    if any(g is None for g in gens):
        print(f"note: {sum(g is None for g in gens)} of {len(gens)} runs have no generator to decode their draws "
              "(pass --dataset and --generator, or train the model); the report shows them without images",
              file=sys.stderr)
    path = bt.report.write([r for _, r, _ in items], args.out, generators=gens, names=[n for n, _, _ in items],
                           title=args.title)
    print(f"wrote {path} ({len(items)} runs)")
    return 0


def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="digits, mnist or fashion-mnist (default: digits)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--index", type=int, default=0, help="index into the dataset's test split (default: 0)")
    src.add_argument("--image", default=None, help="a grayscale image file of the dataset's size instead")
    p.add_argument("--generator", choices=["vae", "gan"], default="vae",
                   help="vae (its encoder inverts the input) or gan (inversion by optimisation) (default: vae)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--weights-dir", default=None, help="folder of model weights (default: models/ or the cache)")
    p.add_argument("--data-root", default=None, help="mnist, fashion-mnist: folder of IDX files")
    p.add_argument("--threads", type=_threads, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _threads(text: str) -> int:
    """argparse type of --threads: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (torch CPU threads), got {text!r}")
    return value


def _seconds(text: str) -> float:
    """argparse type of --checkpoint-every: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    """argparse type of --seed: an integer in [0, 2**63)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line (``bayestrex CMD: error: ...``), exit status 2, no usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _kernel_summaries() -> dict[str, str]:
    """The registered kernels and their one-line summaries (the registry is the one list)."""
    from .kernels import describe

    return describe()


def _sampling_args(p: argparse.ArgumentParser, chains: int, samples: int, warmup: int, kernel: str,
                   max_tree_depth: int = 10, max_steps: int = 1000) -> None:
    p.add_argument("--dataset", default="digits", help="dataset whose reference models to use (default: digits)")
    p.add_argument("--chains", type=int, default=chains, help=f"number of chains (default: {chains})")
    p.add_argument("--samples", type=int, default=samples, help=f"kept draws per chain (default: {samples})")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"warmup iterations per chain (default: {warmup}; smc: mutation steps at the posterior after "
                        "tempering, default 10)")
    p.set_defaults(default_warmup=warmup)
    p.add_argument("--sigma", type=float, default=0.05, help="likelihood width sigma (default: 0.05)")
    p.add_argument("--kernel", default=kernel, choices=sorted(_kernel_summaries()), metavar="KERNEL",
                   help="sampling kernel: " + "; ".join(f"{k}: {v}" for k, v in _kernel_summaries().items())
                   + f" (default: {kernel})")
    p.add_argument("--max-tree-depth", type=int, default=max_tree_depth,
                   help=f"NUTS: at most 2^DEPTH gradient evaluations per draw (default: {max_tree_depth})")
    p.add_argument("--dense-mass", action="store_true", help="nuts, hmc: adapt a dense mass matrix instead of a "
                   "diagonal (hmc and chees already do when latent_dim <= 32)")
    p.add_argument("--max-steps", type=int, default=max_steps,
                   help=f"hmc, chees, smc: at most this many leapfrog steps per draw (default: {max_steps})")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--weights-dir", default=None, help="folder of model weights (default: models/ or the cache)")
    p.add_argument("--data-root", default=None, help="mnist, fashion-mnist: folder of IDX files (default: the "
                   "installed data source)")
    p.add_argument("--threads", type=_threads, default=1, help="torch CPU threads (default: 1, often fastest)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bayestrex", description="Model transparency by example: sample inputs "
                                     "whose classifier probabilities hit a target.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="sample several targets on the digits models; write figures and a table",
                       description="Sample high:0, ambiguous:3,8, uniform and graded:1,7,0.3 with the digits VAE and "
                                   "classifier; write images, statistic histograms, traces and a summary table.")
    _sampling_args(p, chains=16, samples=100, warmup=100, kernel="chees", max_steps=64)
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--targets", nargs="+", default=list(DEMO_TARGETS), help="targets to sample")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="targets sampled in parallel processes (default: min(2, CPU count))")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sample", help="sample one target; write the result file, figures and summary",
                       description="Sample one target and write result.nc, images.png, statistics.png, trace.png "
                                   "and summary.md into --out.")
    p.add_argument("--target", default=None, help="e.g. high:0, ambiguous:3,8, uniform, graded:1,7,0.3")
    p.add_argument("--out", default=None, help="output folder")
    _sampling_args(p, chains=4, samples=300, warmup=300, kernel="nuts")
    p.add_argument("--checkpoint-every", type=_seconds, default=60.0, metavar="SECONDS",
                   help=f"{', '.join(RESUMABLE)}: save the run to --out/{CHECKPOINT} this often, and on Ctrl-C "
                        "or SIGTERM (default: 60)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in folder RUN (killed or interrupted) with its own arguments; its draws "
                        "are those of an uninterrupted run")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("diagnose", help="print the summary and diagnostics of a saved result",
                       description="Print R-hat, ESS, attainment and warnings for a result file written by sample.")
    p.add_argument("result", help="a result.nc file")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any warning is raised")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("train", help="train a dataset's reference models and write their weights",
                       description="Train zoo models with the dataset's recipe (bayestrex.nets.recipe, seed 0).")
    p.add_argument("--dataset", default="digits", help="dataset: digits, mnist, fashion-mnist (default: digits)")
    p.add_argument("--models", nargs="+", default=["vae", "classifier"],
                   help="vae, classifier, gan, classifier-split, vae-split, vae-without-C, or all "
                        "(default: vae classifier)")
    p.add_argument("--data-root", default=None, help="folder of IDX files (default: the installed data source)")
    p.add_argument("--weights-dir", "--out", dest="weights_dir", default=None,
                   help="output folder (default: models/ or the cache)")
    p.add_argument("--overwrite", action="store_true", help="replace weight files that exist (without it, train "
                   "refuses, so the shipped weights behind the README's numbers stay)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sbc", help="simulation-based calibration of a kernel: are its draws right?",
                       description="Repeat: draw z from the prior, set the target to the statistics of G(z) plus "
                                   "N(0, sigma^2) noise, sample that posterior as a user would, rank z among the "
                                   "draws. An exact sampler gives uniform ranks; writes sbc.png (ECDF of the ranks "
                                   "with simultaneous bands), sbc.json and sbc.md with the verdict.")
    _sampling_args(p, chains=16, samples=100, warmup=100, kernel="chees", max_steps=1000)
    p.add_argument("--statistic", default="ambiguous:3,8",
                   help="a target form whose statistic is pinned (any value allowed), e.g. ambiguous:3,8 or "
                        "graded:1,7,0.3 (default: ambiguous:3,8)")
    p.add_argument("--replicates", type=int, default=100, help="SBC replicates (default: 100)")
    p.add_argument("--draws", type=int, default=None, help="draws ranked per replicate (default: --chains)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="replicates run in parallel processes (default: min(2, CPU count))")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when the verdict is FAIL")
    p.set_defaults(func=cmd_sbc)

    p = sub.add_parser("xgems", help="xGEMs: walk an input's latent code toward a class until the label switches",
                       description="Invert an input, walk its code toward --target (default: the second most likely "
                                   "class) along the high-confidence posterior with a prior at the code, fit the "
                                   "confidence manifold; write xgems-path.png and xgems.json.")
    _explain_args(p)
    p.add_argument("--target", type=int, default=None, help="class to walk toward (default: the runner-up)")
    p.add_argument("--sigma", type=float, default=0.05, help="likelihood width (default: 0.05)")
    p.add_argument("--prior-scale", type=float, default=1.0, help="width of the prior at the code (default: 1)")
    p.add_argument("--step", type=float, default=0.02, help="latent step length (default: 0.02)")
    p.add_argument("--max-steps", type=int, default=500, help="at most this many steps (default: 500)")
    p.set_defaults(func=cmd_xgems)

    p = sub.add_parser("cdeepex", help="CDeepEx: the closest boundary point between the true and a probe class",
                       description="Invert an input and find the closest code on the --true/--probe boundary where "
                                   "no third class wins (augmented Lagrangian); write cdeepex.png (red/blue "
                                   "explanation), cdeepex-path.png and cdeepex.json.")
    _explain_args(p)
    p.add_argument("--true", type=int, default=None, help="the class the input has (default: the predicted one)")
    p.add_argument("--probe", type=int, default=None, help="why not this class? (default: the runner-up)")
    p.add_argument("--margin", type=float, default=0.0, help="how far both must beat every other class (llh)")
    p.add_argument("--outer", type=int, default=100, help="outer (multiplier) iterations (default: 100)")
    p.add_argument("--inner", type=int, default=30, help="gradient steps per outer iteration (default: 30)")
    p.set_defaults(func=cmd_cdeepex)

    p = sub.add_parser("intervene", help="interventions on a hidden layer's discrete codes that move the class",
                       description="Encode a test input's hidden activations (the zoo classifier's last hidden layer) "
                                   "with the zoo's discrete VAE, sample codes close to them that the rest of the "
                                   "classifier assigns to --to (MH, Gibbs moves), find the minimal intervention; "
                                   "write intervention.png (images decoded from g(x), dec(c), dec(c'), and the "
                                   "difference), intervention-latents.png, intervention.json and result.nc.")
    p.add_argument("--dataset", default="digits", help="digits, mnist or fashion-mnist (default: digits)")
    p.add_argument("--index", type=int, default=0, help="index into the dataset's test split (default: 0)")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--to", type=int, help="the class to move the input to (target high:B,log)")
    goal.add_argument("--target", help="any target instead, e.g. ambiguous:3,8")
    p.add_argument("--out", default=None,
                   help="output folder (default: intervene-output/<dataset>-<index>-to-<B>, or -<target>)")
    p.add_argument("--chains", type=int, default=8, help="chains (default: 8)")
    p.add_argument("--samples", type=int, default=1000, help="kept draws per chain (default: 1000)")
    p.add_argument("--warmup", type=int, default=500, help="warmup iterations per chain (default: 500)")
    p.add_argument("--flip-prob", type=float, default=0.05,
                   help="prior probability that a latent changes (default: 0.05)")
    p.add_argument("--sigma", type=float, default=0.05, help="likelihood width (default: 0.05)")
    p.add_argument("--max-radius", type=int, default=2,
                   help="Hamming radius of the exact search for the minimal intervention (default: 2)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--weights-dir", default=None, help="folder of model weights (default: models/ or the cache)")
    p.add_argument("--data-root", default=None, help="mnist, fashion-mnist: folder of IDX files")
    p.add_argument("--threads", type=_threads, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_intervene)

    p = sub.add_parser("sweep", help="run a grid of runs from a TOML spec into a sweep folder (resumable)",
                       description="Run every (dataset, generator, classifier, target, kernel, sigma, seed) run of "
                                   "SPEC.toml that is not done yet; each result is a netCDF file under OUT/runs/, "
                                   "OUT/index.md lists status and diagnostics. Rerunning skips finished runs.")
    p.add_argument("spec", help="a sweep spec (TOML; see bayestrex.sweeps)")
    p.add_argument("--out", default=None, help="sweep folder (default: sweeps/<spec name>)")
    p.add_argument("--backend", choices=["process", "ray", "serial"], default="process",
                   help="process: local worker processes (default); ray: a Ray task per run; serial: this process")
    p.add_argument("--workers", type=int, default=None,
                   help="process: worker processes (default: CPU count); ray: CPUs of a local instance")
    p.add_argument("--address", default=None, help="ray: address of a running cluster (e.g. auto, HOST:6379 or "
                   "ray://HOST:10001); default: start a local instance")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs that raised an error")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")
    p.add_argument("--weights-dir", default=None, help="folder of model weights for the report's images")
    p.add_argument("--quiet", action="store_true", help="no line per finished run")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="one self-contained HTML report of result files or sweep folders",
                       description="Write one HTML file (images inlined) with, per run, the settings, draws, "
                                   "statistic histograms, trace and rank plots and diagnostics; with several runs, "
                                   "a sortable index table first.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="a result .nc file, a sweep folder, or a folder of "
                   "*result.nc files (as demo writes)")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--dataset", default=None, help="dataset of the generator (default: as recorded in the run)")
    p.add_argument("--generator", default=None, help="zoo generator to decode draws, e.g. vae or gan (default: as "
                   "recorded in the run; without one the report has no images)")
    p.add_argument("--weights-dir", default=None, help="folder of model weights (default: models/ or the cache)")
    p.add_argument("--title", default=None, help="page title")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    from .cli_checks import check

    args = build_parser().parse_args(argv)
    try:
        check(args)  # every option that can be judged alone, before any work
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"bayestrex {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        more = ""
        if args.command == "sample" and (getattr(args, "resume", None)
                                         or (getattr(args, "kernel", None) in RESUMABLE and args.out)):
            more = f"; continue with: bayestrex sample --resume {args.resume or args.out}"
        what = "interrupted before the first kept draw" if args.command == "sample" else "interrupted"
        print(f"bayestrex {args.command}: {what}{more}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
