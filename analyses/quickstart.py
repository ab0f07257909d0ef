"""Time the README's quick start exactly as written (its first python block, run in a temporary folder).

    python -m analyses.quickstart analyses/results/quickstart/timing.json

Records wall and CPU seconds (CPU time is what an idle core would take: the block runs torch on one thread), the load
average around it (a busy machine stretches the wall time, not the CPU time), and the run's R-hat and attainment.
The README promises the block runs in under a minute on 2 idle cores.
"""

import os
import re
import sys
import tempfile
import time
from pathlib import Path

from bayestrex.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def quick_start_code(readme: Path = ROOT / "README.md") -> str:
    """The first python block after the README's ``## Quick start`` heading."""
    text = readme.read_text()
    section = text[text.index("## Quick start"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    code = quick_start_code()
    scope: dict = {}
    load_before = os.getloadavg()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            exec(compile(code, "README quick start", "exec"), scope)  # noqa: S102 - our own README's code
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            os.chdir(here)
    result = scope["result"]
    row = dict(wall_seconds=round(wall, 1), cpu_seconds=round(cpu, 1), load_average_before=load_before[0],
               load_average_after=os.getloadavg()[0], kernel=result.info["kernel"],
               chains=result.num_chains, draws=result.num_draws, max_r_hat=float(result.summary()["r_hat"].max()),
               attainment=float(result.attainment), grad_evals=result.info.get("grad_evals"),
               under_a_minute_of_cpu=cpu < 60, how="python -m analyses.quickstart (README quick start, as written)")
    print(row)
    if argv:
        write_json(row, argv[0])
    return row


if __name__ == "__main__":
    main()
