"""The layering in docs/architecture.md holds in the code; the README's kernel list and example kernel match the
registry and run."""

import ast
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bayestrex"


def _top(module: str) -> str:
    """``bayestrex.kernels.hmc`` -> ``kernels``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    """Every ``bayestrex`` module that ``path`` imports (top-level and inside functions)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [node.module] if node.module else [a.name for a in node.names]
                out |= {".".join(base + [n]) for n in names}
            elif node.module and node.module.startswith("bayestrex"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bayestrex")}
    return out


def _rules() -> dict[str, set[str] | None]:
    table = (ROOT / "docs" / "architecture.md").read_text().split("## Who may import whom", 1)[1]
    rules = {}
    for m in re.finditer(r"^\| `(\w+)` \| (.+?) \|$", table, flags=re.M):
        allowed = m.group(2).strip()
        rules[m.group(1)] = None if allowed == "any" else set(re.findall(r"`(\w+)`", allowed))
    return rules


def test_imports_follow_the_documented_layering():
    rules = _rules()
    assert {"kernels", "driver", "density", "posterior", "result", "diagnostics"} <= set(rules)
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PKG:
            continue  # the public surface re-exports everything
        owner = _top(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert owner in rules, f"{path.relative_to(ROOT)} has no row in docs/architecture.md"
        allowed = rules[owner]
        if allowed is None:
            continue
        for dep in _imports(path):
            top = _top(dep)
            if top and top != owner and top not in allowed:
                problems.append(f"{path.relative_to(ROOT)} imports {dep}")
    assert not problems, problems


def test_kernels_never_import_the_posterior_or_the_targets():
    for path in (PKG / "kernels").glob("*.py"):
        deps = {_top(d) for d in _imports(path)}
        assert not deps & {"posterior", "targets", "driver", "result", "sampling"}, (path.name, deps)


def test_one_progress_bar_and_one_draw_loop_in_the_package():
    sources = {p: p.read_text() for p in PKG.rglob("*.py")}
    bars = sorted(p.name for p, s in sources.items() if "tqdm(" in s)
    # tabular and training train networks; sbc counts replicates (each one a run of the driver, its own bar off)
    assert bars == ["driver.py", "sbc.py", "tabular.py", "training.py"], bars
    stacking = [p.name for p, s in sources.items() if re.search(r"torch\.stack\(\s*\w+,\s*dim=1\)", s)]
    assert stacking == [], stacking


def test_the_readme_lists_exactly_the_registered_kernels():
    from bayestrex import kernels

    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Kernels", 1)[1].split("\n\n", 2)[1]
    listed = set(re.findall(r"^\| `([\w-]+)` \|", table, flags=re.M))
    assert listed == set(kernels.KERNELS), (listed, sorted(kernels.KERNELS))


def test_the_readme_example_kernel_runs_and_is_exact():
    """The README's 20-line random-walk Metropolis kernel: registered, run by the driver on N(1, 0.5²) in 2-d."""
    import math

    from bayestrex import kernels
    from bayestrex.density import Density
    from bayestrex.driver import run

    readme = (ROOT / "README.md").read_text()
    code = readme.split("<!-- example-kernel -->", 2)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 28, "the example kernel is meant to stay short"
    namespace: dict = {}
    try:
        exec(compile(code, "README example kernel", "exec"), namespace)  # noqa: S102 - the README's own code
        kernel = kernels.get("rwm")
        dens = Density(lambda z: -0.5 * ((z - 1.0) / 0.5).square().sum(-1), 2)
        z0 = torch.zeros(64, 2)
        draws = run(kernel, dens, z0, num_samples=400, warmup=100, seed=0, progress=False)
    finally:
        kernels.KERNELS.pop("rwm", None)
    z = draws.z.reshape(-1, 2)
    # 64 chains x 400 draws, autocorrelated: an ESS of at least ~2000 gives se(mean) <= 0.5 / sqrt(2000) = 0.011
    assert (z.mean(0) - 1.0).abs().max() < 6 * 0.5 / math.sqrt(2000)
    assert (z.var(0) - 0.25).abs().max() < 0.05
    assert 0.1 < draws.stats["accepted"].float().mean() < 0.9
