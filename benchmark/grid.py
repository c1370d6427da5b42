"""Run a paper table's grid of runs on Ray: this machine by default, a Ray cluster with --address.

    python -m benchmark.grid table9 --dry-run             # the commands, each with its run's state
    python -m benchmark.grid table9                       # run them here; rerun the same command after a kill
    python -m benchmark.grid table5 --scale paper --address auto   # on a Ray cluster (docs/scaling.md)
    python -m benchmark.report table9                     # the table, curves and paper numbers in docs/

Each run is one Ray task asking for --threads-per-run CPUs, and its script gets the same
`--threads`, so the runs never oversubscribe the cores (two one-thread dg runs side by side
took 28.4 s here, the same two one after another with two threads 34.8 s). A run lives in
`<runs root>/<table>/<group>__<method>__s<seed>/` (docs/results.md): a complete one is
skipped, an unfinished one is resumed from its checkpoint (`--resume`), a complete one with
fewer steps than asked is resumed to train longer (reduced -> paper scale), and a failed one
is retried --retries times (resumed) and then reported; the grid exits non-zero while any
run has failed. A task runs its script as a subprocess in the repository, stdout and stderr
to the run's log.txt; on a cluster the repository, datasets and runs root must sit at the
same path on every node (a shared file system), see docs/scaling.md.

A complete run's results.json is also copied into the archive, `benchmark/results/runs/<table>/<run>.json`
(with the default runs root; `--archive DIR` elsewhere, `--archive none` for none), which is committed: the
project's own runs outlive the machine that made them, a grid skips a run that the archive holds complete
with the steps asked, and `benchmark.report` reads the archive where the runs root has no such run. A run made
from a tree with uncommitted changes (results.json `git_commit` ending in `+dirty`) or outside a git checkout
(`git_commit` null) is not archived: no commit holds the code that made it. The grid says which runs it archived
and which it refused, and why; such a run stays in the runs root (and is skipped there as complete): to archive
it, commit the code, delete the run's folder and run the grid again.
"""

import argparse
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmark import specs

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_ROOT = ROOT / "runs" / "grid"
DEFAULT_ARCHIVE = ROOT / "benchmark" / "results" / "runs"


@dataclass
class Run:
    name: str  # <table>/<group>__<method>__s<seed>, its folder under the runs root
    script: str  # relative to the repository, or absolute
    flags: list[str]  # everything but --run-name, --threads and --dataset-dir
    steps: int  # --total-steps, also among the flags
    group: str  # the spec's group and method names, for the report
    method: str


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def expand(table_name: str, table: specs.Table, scale: str, seeds: list[int] | None = None, only: str | None = None) -> list[Run]:
    """Every run of the table at this scale, group by group, seed by seed, method by method: a grid stopped
    part-way leaves every method of a group with the same seeds."""
    runs = []
    for group in table.groups:
        for seed in seeds or group.seeds[scale]:
            for method, (script, flags) in group.methods.items():
                name = f"{table_name}/{slug(group.name)}__{slug(method)}__s{seed}"
                if only and only not in name:
                    continue
                steps = group.steps[scale]
                runs.append(Run(name, script, [*group.flags, *flags, "--seed", str(seed), "--total-steps", str(steps)], steps,
                                group.name, method))
    return runs


def read_results(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):  # absent; never half-written (the scripts rename into place)
        return None


def state(run_dir: Path, steps: int) -> str:
    """new, complete (with at least `steps`), running (a live process on this host) or resumable (the rest:
    killed, interrupted, failed, or complete with fewer steps than asked)."""
    results = read_results(run_dir)
    if results is None:
        return "new" if not (run_dir / "results.json").exists() else "resumable"
    if results.get("status") == "complete" and results.get("args", {}).get("total_steps", 0) >= steps:
        return "complete"
    if results.get("status") == "running" and results.get("host") == os.uname().nodename:
        try:
            os.kill(int(results["pid"]), 0)
            return "running"
        except (ProcessLookupError, PermissionError, KeyError, ValueError, TypeError):
            pass
    return "resumable"


def archive_path(archive: Path | None, run: Run) -> Path | None:
    return archive / f"{run.name}.json" if archive else None


def archived(archive: Path | None, run: Run) -> dict | None:
    """The archive's results.json of the run, if it is complete with at least the run's steps."""
    path = archive_path(archive, run)
    try:
        results = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None
    if results and results.get("status") == "complete" and results.get("args", {}).get("total_steps", 0) >= run.steps:
        return results
    return None


def uncommitted(results: dict) -> str | None:
    """Why no commit holds the code of a run (results.json `git_commit` null or ending in `+dirty`), or None."""
    commit = results.get("git_commit")
    if not commit:
        return "made outside a git checkout (git_commit null)"
    if str(commit).endswith("+dirty"):
        return f"made from a tree with uncommitted changes (git_commit {commit.removesuffix('+dirty')[:7]}+dirty)"
    return None


def archive_run(archive: Path | None, run: Run, runs_root: Path) -> str | None:
    """Copy a complete run's results.json into the archive, atomically: "archived"; "kept" when the archive's copy
    trained as long; "refused: <why>" for a run whose code no commit holds (uncommitted()); None when there is
    nothing to archive (no archive, or the run is not complete)."""
    results, path = read_results(runs_root / run.name), archive_path(archive, run)
    if path is None or not results or results.get("status") != "complete":
        return None
    why = uncommitted(results)
    if why:
        return f"refused: {why}"
    try:
        kept = json.loads(path.read_text())
        if kept.get("status") == "complete" and kept["args"]["total_steps"] >= results["args"]["total_steps"]:
            return "kept"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)
    return "archived"


def say_archived(outcomes: dict[str, str | None], archive: Path | None) -> None:
    """One line for the runs archived, one per run refused (with why)."""
    stored = [name for name, outcome in outcomes.items() if outcome == "archived"]
    if len(stored) == 1:
        print(f"run {stored[0]} archived into {archive}", flush=True)
    elif stored:
        print(f"archived {len(stored)} complete runs into {archive}", flush=True)
    for name, outcome in outcomes.items():
        if outcome and outcome.startswith("refused"):
            print(f"run {name} complete, NOT archived: {outcome.removeprefix('refused: ')}; it stays in the runs root "
                  "(to archive it: commit the code, delete the run's folder, run the grid again)", flush=True)


def grid_state(run: Run, runs_root: Path, archive: Path | None) -> str:
    """state() of the run's folder, or `archived` for a run this runs root lacks and the archive holds complete."""
    current = state(runs_root / run.name, run.steps)
    return "archived" if current == "new" and archived(archive, run) else current


def script_run_name(run_dir: Path) -> str:
    """What --run-name must say for the script (which writes `runs/{run_name}` in the repository) to write into run_dir."""
    try:
        return str(run_dir.relative_to(ROOT / "runs"))
    except ValueError:
        return str(run_dir)  # an absolute run name: Path("runs") / "/x" is "/x"


def command(run: Run, run_dir: Path, threads: int, dataset_dir: str | None) -> list[str]:
    """A fresh run, or --resume for one that has a results.json (with --total-steps, which a resume may raise)."""
    cmd = [sys.executable, str(ROOT / run.script)]
    if state(run_dir, run.steps) == "resumable":
        cmd += ["--resume", str(run_dir), "--total-steps", str(run.steps)]
    else:
        cmd += [*run.flags, "--run-name", script_run_name(run_dir)]
        if dataset_dir:
            cmd += ["--dataset-dir", dataset_dir]
    return cmd + ["--threads", str(threads)]


def shown(cmd: list[str]) -> str:
    """A command as a user would type it in the repository: `python matd3bc.py ...`."""
    script = Path(cmd[1])
    return shlex.join(["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script), *cmd[2:]])


# glibc keeps freed memory in its heap instead of unmapping it, so the large activations a step allocates afresh
# (MABCQ's 10 x 1024 sampled next actions) do not page-fault again every step: a halfcheetah-2x3 MABCQ run took
# 25.6 instead of 29.8 ms per update, with 153k instead of 849k minor page faults (docs/scaling.md). Same numbers.
RUN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32), "MALLOC_TOP_PAD_": str(2**28)}
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"  # SMAX's jax evaluation, one core


def execute(cmd: list[str], cwd: str, log: str, threads: int = 1) -> int:
    """One run as a subprocess: the body of a Ray task, returning the script's exit code.

    The child is polled rather than waited on, so that ray.cancel's KeyboardInterrupt reaches this
    loop; the child then gets SIGTERM and records itself as interrupted. PR_SET_PDEATHSIG sends the
    same SIGTERM if the worker dies without cancelling, so a lost grid leaves no orphan training. The
    child has its own session: a Ctrl-C in the grid's terminal goes to the grid, which stops the runs."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None  # looked up before the fork
    env = {**RUN_ENV, **({"XLA_FLAGS": XLA_ONE_THREAD} if threads == 1 else {}), **os.environ,
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_MININTERVAL": "30", "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=(lambda: prctl(1, signal.SIGTERM)) if prctl else None)  # 1: PR_SET_PDEATHSIG
        try:
            while proc.poll() is None:
                time.sleep(0.5)
            return proc.returncode
        except BaseException:
            proc.terminate()
            proc.wait(timeout=120)
            raise


def progress(start: float, counts: dict) -> str:
    """One line: runs done / running / queued / failed / skipped, and an ETA from the rate at which runs
    have finished here so far. (Every run is submitted at the start, so a run's time since submission
    counts its wait in the queue too: the mean of those would grow with the queue.)"""
    line = (f"[{time.strftime('%H:%M:%S')} +{(time.time() - start) / 60:.1f} min] done {counts['done']}, "
            f"running {counts['running']}, queued {counts['queued']}, failed {counts['failed']}, skipped {counts['skipped']}")
    left = counts["running"] + counts["queued"]
    if counts["done"] and left:
        line += f", ETA {(time.time() - start) / counts['done'] * left / 60:.1f} min"
    return line


def run_grid(runs: list[Run], runs_root: Path, threads: int, retries: int, dataset_dir: str | None,
             archive: Path | None = None) -> tuple[int, list[str]]:
    """Every run not complete as a Ray task (Ray already initialised); returns (finished here, failed names)."""
    import ray

    task = ray.remote(num_cpus=threads, max_retries=0)(execute)  # a retry is a resume, decided here
    states = {run.name: grid_state(run, runs_root, archive) for run in runs}
    outcomes = {run.name: archive_run(archive, run, runs_root) for run in runs if states[run.name] == "complete"}  # finished before
    say_archived(outcomes, archive)
    todo = [run for run in runs if states[run.name] in ("new", "resumable")]
    busy = [run.name for run in runs if states[run.name] == "running"]
    counts = dict(done=0, running=0, queued=0, failed=0, skipped=len(runs) - len(todo) - len(busy))
    from_archive = sum(s == "archived" for s in states.values())
    if from_archive:
        print(f"{from_archive} runs complete in the archive {archive} (not in the runs root): skipped", flush=True)
    print(f"{len(runs)} runs: {counts['skipped']} complete (skipped), {len(busy)} running in another process (skipped), "
          f"{sum(states[r.name] == 'resumable' for r in todo)} to resume, {sum(states[r.name] == 'new' for r in todo)} to start",
          flush=True)
    counts["skipped"] += len(busy)
    start, attempts, pending, failed = time.time(), {}, {}, []

    def submit(run):
        attempts[run.name] = attempts.get(run.name, 0) + 1
        run_dir = runs_root / run.name
        ref = task.remote(command(run, run_dir, threads, dataset_dir), str(ROOT), str(run_dir / "log.txt"), threads)
        pending[ref] = run

    def report_progress():
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        counts["running"] = min(len(pending), slots)
        counts["queued"] = len(pending) - counts["running"]
        print(progress(start, counts), flush=True)

    try:
        for run in todo:
            submit(run)
        last_print = 0.0
        while pending:
            if STOP.is_set():  # a Ctrl-C that a Ray call swallowed
                raise KeyboardInterrupt
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1)
            for ref in ready:
                run = pending.pop(ref)
                try:
                    code = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or its node died
                    code = f"{type(e).__name__}"
                if code == 0 and state(runs_root / run.name, run.steps) == "complete":
                    counts["done"] += 1
                    outcomes[run.name] = archive_run(archive, run, runs_root)
                    say_archived({run.name: outcomes[run.name]}, archive)
                elif attempts[run.name] <= retries:
                    print(f"run {run.name} failed (exit {code}); retry {attempts[run.name]} of {retries}, resuming", flush=True)
                    submit(run)
                else:
                    counts["failed"] += 1
                    failed.append(run.name)
                    print(f"run {run.name} FAILED (exit {code}) after {attempts[run.name]} attempts: "
                          f"{(read_results(runs_root / run.name) or {}).get('error') or 'see its log'}; "
                          f"log: {runs_root / run.name / 'log.txt'}", flush=True)
            if ready or time.time() - last_print > 60:
                report_progress()
                last_print = time.time()
    except KeyboardInterrupt:
        print(f"interrupted: stopping {len(pending)} runs (they record themselves as interrupted); "
              "rerun the same command to resume them", flush=True)
        for run in pending.values():  # runs on this node: SIGTERM them directly, not only through Ray's cancel
            terminate_local(runs_root / run.name)
        for ref in pending:
            ray.cancel(ref)
        ray.wait(list(pending), num_returns=len(pending), timeout=150)
        raise
    refused = [name for name, outcome in outcomes.items() if outcome and outcome.startswith("refused")]
    if refused:
        print(f"{len(refused)} complete runs not archived (no commit holds their code): {', '.join(refused)}", flush=True)
    return counts["done"], failed


def terminate_local(run_dir: Path) -> None:
    """SIGTERM a running run whose process lives on this host (results.json `pid`, `host`): it records itself
    as interrupted and exits. A run on another node is stopped by ray.cancel, whose KeyboardInterrupt makes
    `execute` terminate its child."""
    results = read_results(run_dir) or {}
    if results.get("status") != "running" or results.get("host") != os.uname().nodename:
        return
    try:
        pid = int(results["pid"])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if run_dir.name in command:  # that run's process, not a stale pid reused by another one
            os.kill(pid, signal.SIGTERM)
    except (OSError, KeyError, ValueError, TypeError):
        pass


STOP = threading.Event()


def archive_root(given: str | None, runs_root: Path) -> Path | None:
    """--archive: a folder, `none`, or by default the committed archive for the default runs root (a test's or a
    user's own runs root gets none unless asked)."""
    if given is None:
        return DEFAULT_ARCHIVE if runs_root == DEFAULT_RUNS_ROOT else None
    return None if given == "none" else Path(given).resolve()


def stop(signum, frame):
    """Ctrl-C or SIGTERM: stop the grid. Also remembered, in case a Ray call swallows the KeyboardInterrupt."""
    STOP.set()
    raise KeyboardInterrupt


def start_local_ray(ray, num_cpus: int, attempts: int = 3) -> None:
    """A new local Ray instance. Ray gives its raylet 30 s to register, which a machine busy with other jobs can miss
    (seen on 2 cores beside a dataset build): try again, then stop with one line instead of Ray's traceback."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception as error:  # Ray raises a bare Exception for the timeout
            ray.shutdown()
            print(f"Ray's local instance did not start (attempt {attempt} of {attempts}): {error}", flush=True)
    raise SystemExit(f"error: Ray's local instance did not start in {attempts} attempts; the machine may be too busy "
                     "(see `top`): stop other jobs or run the grid again")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help=f"one of {', '.join(specs.TABLES)} (or a name for --spec-file)")
    parser.add_argument("--scale", choices=["reduced", "paper"], default="reduced", help="the stated reduced scale (default) or the paper's")
    parser.add_argument("--seeds", type=int, nargs="+", help="these seeds instead of the spec's")
    parser.add_argument("--only", help="only the runs whose name (<table>/<group>__<method>__s<seed>) contains this")
    parser.add_argument("--dry-run", action="store_true", help="print each run's state and command, and exit")
    parser.add_argument("--runs-root", default=str(DEFAULT_RUNS_ROOT), help="where the runs live (default: runs/grid of the repository)")
    parser.add_argument("--archive", help="where complete runs' results.json are copied and looked up (default: "
                        "benchmark/results/runs with the default runs root, else none; `none`: none)")
    parser.add_argument("--address", help="a Ray cluster (`auto` on one of its nodes, or host:port); default: a new Ray instance here")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: this machine's cores)")
    parser.add_argument("--threads-per-run", type=int, default=1, help="CPUs a run asks Ray for, and its --threads (default 1)")
    parser.add_argument("--retries", type=int, default=2, help="resumes of a failed run before it is reported (default 2)")
    parser.add_argument("--dataset-dir", help="passed to every new run (default: the scripts' own, datasets/ or ODMARL_DATASET_DIR)")
    parser.add_argument("--spec-file", help="a table as JSON (benchmark/specs.py's fields) instead of a named one")
    args = parser.parse_args(argv)
    if args.threads_per_run < 1 or args.retries < 0:
        parser.error("--threads-per-run must be >= 1 and --retries >= 0")
    table = specs.load(args.table, args.spec_file)
    runs_root = Path(args.runs_root).resolve()
    archive = archive_root(args.archive, runs_root)
    runs = expand(args.table, table, args.scale, args.seeds, args.only)
    if not runs:
        parser.error(f"no run of {args.table} matches --only {args.only!r}")
    if args.dry_run:
        for run in runs:
            run_dir = runs_root / run.name
            print(f"[{grid_state(run, runs_root, archive)}] {shown(command(run, run_dir, args.threads_per_run, args.dataset_dir))}")
        return 0

    import ray

    started_ray = not ray.is_initialized()  # a caller (a test, a notebook) may have connected already
    if started_ray and args.address:
        ray.init(address=args.address, log_to_driver=False)
    elif started_ray:  # address="local": never attach to another grid's instance on this machine
        start_local_ray(ray, args.num_cpus or os.cpu_count())
    STOP.clear()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}  # `kill` stops the runs as Ctrl-C does
    start = time.time()
    try:
        done, failed = run_grid(runs, runs_root, args.threads_per_run, args.retries, args.dataset_dir, archive)
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started_ray:
            ray.shutdown()
    print(f"{args.table}: {done} runs finished here in {(time.time() - start) / 60:.1f} min; {len(failed)} failed"
          + (": " + ", ".join(failed) if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
