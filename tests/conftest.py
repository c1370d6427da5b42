"""Helpers shared by the tests: run a script as a user does, and find a run's results."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# pytest.ini runs the test files on up to two workers (pytest-xdist, a file per worker): one torch thread in each,
# or two workers with torch's default threads oversubscribe the cores (the scripts they start get one thread too)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

# one persistent XLA compilation cache for the whole suite, its workers and the scripts they start: a SMAX process
# compiles its env step and evaluation once per suite, not once per process (measured: a smax-3m smoke run of
# mabcq_discrete.py takes 104 s cold, 43 s warm). A size limit turns on JAX's file lock, so two workers never read a
# half-written entry; a user's own JAX_COMPILATION_CACHE_DIR wins.
for _key, _value in {"JAX_COMPILATION_CACHE_DIR": str(ROOT / ".pytest_cache" / "jax-compilation-cache"),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                     "JAX_COMPILATION_CACHE_MAX_SIZE": str(2**30)}.items():
    os.environ.setdefault(_key, _value)


def run_script(script: str, cwd: Path, *flags, check: bool = True, timeout: int = 600, dataset_dir: Path | None = None,
               env: dict | None = None):
    """`python <script> --dataset-dir <cwd>/datasets <flags>` with runs/ under `cwd`, one torch thread (the
    machine is shared) and no progress bars. Asserts success unless check=False."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    cmd = [sys.executable, str(ROOT / script), "--dataset-dir", str(dataset_dir or cwd / "datasets"), *flags]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def find_run(cwd: Path, exp_name: str) -> tuple[dict, Path]:
    """(results.json, run folder) of the one run of `--exp-name exp_name` under cwd/runs, variants included."""
    runs = cwd / "runs"
    (run_dir,) = [*runs.glob(f"*__{exp_name}__*"), *runs.glob(f"*__{exp_name}-*__*")]
    return json.loads((run_dir / "results.json").read_text()), run_dir


def one_line_error(proc) -> str:
    """The error a refused input printed: exit code 1, one line, no traceback."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]
