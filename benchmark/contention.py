"""How fast a run is alone and beside a second one on the same cores, per thread setting.

    python benchmark/contention.py                     # dg, 3000 steps, the settings of docs/contention.md
    python benchmark/contention.py --steps 1000 --settings auto 1

For each setting of `--threads` (`auto` is the default, 0: runs share the cores among themselves; `2`
is what torch picks by itself on two cores, i.e. the scripts before the run contract), it times one
`matd3bc.py` run alone and two identical runs started together. It prints one line per case: the
process wall time, the training phase's updates per second (from results.json) and the run's speed
(by wall time, the whole run: dataset load, VAE fit, training, evaluations) relative to a lone run with
torch's own default threads. Nothing is asserted: this machine's numbers go in
docs/contention.md, measured with the machine otherwise idle (the load average is printed).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(cwd: Path, name: str, threads: str, steps: int, extra: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user's shell has it
    env["TQDM_DISABLE"] = "1"
    cmd = [sys.executable, str(ROOT / "matd3bc.py"), "--env-id", "dg", "--total-steps", str(steps), "--eval-freq", str(steps),
           "--threads", "0" if threads == "auto" else threads, "--run-name", name, "--dataset-dir", str(cwd / "datasets"), *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed(cwd: Path, names: list[str], threads: str, steps: int, extra: list[str]) -> list[tuple[float, float]]:
    """Start the runs together; (wall seconds, training updates per second) of each."""
    start = time.time()
    procs = [launch(cwd, name, threads, steps, extra) for name in names]
    walls = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a benchmark run failed: {err[-2000:]}")
        walls.append(time.time() - start)
    out = []
    for name, wall in zip(names, walls):
        final = json.loads((cwd / "runs" / name / "results.json").read_text())["final"]
        out.append((wall, final["step"] / final["train_seconds"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps of each run")
    parser.add_argument("--settings", nargs="+", default=["2", "1", "auto"], help="--threads values to compare ('auto' = 0)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for matd3bc.py (after everything else)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average before {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        timed(cwd, ["warmup"], "1", 1, args.extra)  # builds the dataset once
        lone_default = None
        rows = []
        for threads in args.settings:
            (lone,) = timed(cwd, [f"lone-{threads}"], threads, args.steps, args.extra)
            pair = timed(cwd, [f"pair-{threads}-a", f"pair-{threads}-b"], threads, args.steps, args.extra)
            if threads == "2":
                lone_default = lone[0]
            rows.append((threads, lone, pair))
        for threads, lone, pair in rows:
            for case, (wall, speed) in [("alone", lone), *[(f"pair[{k}]", p) for k, p in enumerate(pair)]]:
                relative = f" speed_vs_lone_2threads={lone_default / wall:.2f}" if lone_default else ""
                print(f"threads={threads:<5} case={case:<8} wall={wall:6.1f}s updates_per_second={speed:7.1f}{relative}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
