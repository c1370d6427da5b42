"""Run a paper table's grid of runs on Ray: this machine by default, a Ray cluster with --address.

    python -m benchmark.grid table9 --dry-run             # the commands
    python -m benchmark.grid table9                       # run them here, resumable (rerun after a kill)
    python -m benchmark.grid table5 --scale paper --address auto   # on a Ray cluster (docs/scaling.md)
    python -m benchmark.report table9                     # the table, curves and paper numbers in docs/

Each run is one Ray task asking for --threads-per-run CPUs, and its script gets the same
`--threads`, so the runs never oversubscribe the cores (two one-thread dg runs side by side
took 28.4 s here, the same two one after another with two threads 34.8 s). A run lives in
`runs/grid/<table>/<group>__<method>__s<seed>/` (docs/results.md): a complete one is skipped,
an unfinished one is resumed from its checkpoint (`--resume`), a failed one is retried
--retries times and then reported; the grid exits non-zero while any run has failed.
A task runs its script as a subprocess in --workdir (default: the repository), which must
hold the same code and datasets on every node of a cluster (a shared file system).
"""

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark import specs

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    name: str  # <table>/<group>__<method>__s<seed>
    script: str
    flags: list[str]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def expand(table_name: str, table: specs.Table, scale: str, seeds: list[int] | None, only: str | None) -> list[Run]:
    runs = []
    for group in table.groups:
        for method, (script, flags) in group.methods.items():
            for seed in seeds or group.seeds[scale]:
                name = f"{table_name}/{slug(group.name)}__{slug(method)}__s{seed}"
                if only and only not in name:
                    continue
                runs.append(Run(name, script, [*group.flags, *flags, "--seed", str(seed), "--total-steps", str(group.steps[scale])]))
    return runs


def status(workdir: Path, run: Run) -> str:
    """complete, running (a live process on this host), resumable (a results.json to go on from) or new."""
    path = workdir / "runs" / "grid" / run.name / "results.json"
    if not path.exists():
        return "new"
    try:
        results = json.loads(path.read_text())
    except ValueError:
        return "new"
    if results.get("status") == "complete":
        return "complete"
    if results.get("status") == "running" and results.get("host") == os.uname().nodename:
        try:
            os.kill(int(results["pid"]), 0)
            return "running"
        except (ProcessLookupError, KeyError, ValueError, TypeError):
            pass
    return "resumable"


def command(workdir: Path, run: Run, threads: int, dataset_dir: str | None) -> list[str]:
    cmd = [sys.executable, str(ROOT / run.script)]
    if status(workdir, run) == "resumable":
        cmd += ["--resume", str(Path("runs") / "grid" / run.name)]
    else:
        cmd += [*run.flags, "--run-name", f"grid/{run.name}"]
        if dataset_dir:
            cmd += ["--dataset-dir", dataset_dir]
    return cmd + ["--threads", str(threads)]


def execute(cmd: list[str], workdir: str, log: str) -> int:
    """One run as a subprocess (the body of a Ray task). The child gets SIGTERM if this worker dies, so a
    killed grid leaves no orphan training and the run records itself as interrupted."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)

    def die_with_parent():
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    env = {**os.environ, "TQDM_MININTERVAL": "30", "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.call(cmd, cwd=workdir, env=env, stdout=f, stderr=subprocess.STDOUT,
                               preexec_fn=die_with_parent if sys.platform == "linux" else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help=f"one of {', '.join(specs.TABLES)} (or a name for --spec-file)")
    parser.add_argument("--scale", choices=["reduced", "paper"], default="reduced", help="the stated reduced scale or the paper's")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the spec's seeds")
    parser.add_argument("--only", help="run only the runs whose name contains this")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--address", help="a Ray cluster to run on (e.g. `auto` on a node of it); default: a Ray instance here")
    parser.add_argument("--threads-per-run", type=int, default=1, help="CPUs a run asks Ray for, and its --threads")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: this machine's)")
    parser.add_argument("--retries", type=int, default=2, help="resubmissions of a failed run before it is reported")
    parser.add_argument("--workdir", default=str(ROOT), help="where runs/ and datasets/ live (the scripts' working directory)")
    parser.add_argument("--dataset-dir", help="passed to every run (default: the scripts' own, datasets/ or ODMARL_DATASET_DIR)")
    parser.add_argument("--spec-file", help="a table as JSON (benchmark/specs.py's fields) instead of a named one")
    args = parser.parse_args(argv)
    if args.threads_per_run < 1 or args.retries < 0:
        raise SystemExit("error: --threads-per-run must be >= 1 and --retries >= 0")
    table = specs.load(args.table, args.spec_file)
    workdir = Path(args.workdir).resolve()
    runs = expand(args.table, table, args.scale, args.seeds, args.only)
    if args.dry_run:
        for run in runs:
            print(f"[{status(workdir, run)}] " + " ".join(command(workdir, run, args.threads_per_run, args.dataset_dir)[1:]))
        return 0

    import ray

    todo = [r for r in runs if status(workdir, r) not in ("complete", "running")]
    busy = [r.name for r in runs if status(workdir, r) == "running"]
    print(f"{args.table}: {len(runs)} runs, {len(runs) - len(todo) - len(busy)} complete, {len(busy)} running elsewhere, {len(todo)} to run")
    if not todo:
        return 0
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)  # never another grid's
    task = ray.remote(num_cpus=args.threads_per_run, max_retries=0)(execute)
    start, attempts, pending, failed, durations = time.time(), {}, {}, [], []

    def submit(run):
        attempts[run.name] = attempts.get(run.name, 0) + 1
        log = str(workdir / "runs" / "grid" / run.name / "log.txt")
        ref = task.remote(command(workdir, run, args.threads_per_run, args.dataset_dir), str(workdir), log)
        pending[ref] = (run, time.time())

    try:
        for run in todo:
            submit(run)
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=30)
            for ref in ready:
                run, began = pending.pop(ref)
                code = ray.get(ref)
                if code == 0 and status(workdir, run) == "complete":
                    done += 1
                    durations.append(time.time() - began)
                elif attempts[run.name] <= args.retries:
                    print(f"run {run.name} failed (exit {code}); retry {attempts[run.name]} of {args.retries}, resuming")
                    submit(run)
                else:
                    failed.append(run.name)
                    print(f"run {run.name} FAILED (exit {code}) after {attempts[run.name]} attempts: see runs/grid/{run.name}/log.txt")
            left = len(pending) + 0
            eta = ""
            if durations:
                slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // args.threads_per_run)
                eta = f", ETA {sum(durations) / len(durations) * left / min(slots, max(left, 1)) / 60:.0f} min"
            print(f"[{time.time() - start:7.0f} s] done {done}, running/queued {left}, failed {len(failed)}{eta}", flush=True)
    finally:
        ray.shutdown()
    print(f"{args.table}: {done} finished here in {time.time() - start:.0f} s; {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
