"""A paper table from its grid's results.json files: markdown with the paper's numbers, and learning curves.

    python -m benchmark.report table9                         # docs/results/table9.md, docs/img/table9_*.png
    python -m benchmark.report table5 --scale paper           # the runs of `benchmark.grid table5 --scale paper`
    python -m benchmark.report table9 --out /tmp/r            # elsewhere
    python -m benchmark.report table5 --runs-root none --archive benchmark/results/runs-float32 --page table5_float32-datasets

Reads only `<runs root>/<table>/*/results.json` (docs/results.md), and for a run not complete there the
committed archive's copy (`benchmark/results/runs/<table>/<run>.json`, benchmark/grid.py). Only complete runs count,
and from each the evaluation at the scale's step (the last one, or an earlier one of a run
trained longer); the others are listed as missing, with why. Per cell: mean ± std over seeds
of that evaluation's metric, n, and the interquartile mean with a 95% stratified bootstrap
interval over seeds (rliable, Agarwal et al. 2021); for tables whose cells share one scale,
also an IQM per method over every group and seed. Curves: mean ± std over seeds, x = step. Per group, the
datasets its runs learned from (results.json `dataset.fingerprint`), flagged when they are more than one, and
the runs made from a tree with uncommitted changes (results.json `git_commit` ending in `+dirty`, or none).

A page is a function of the records and the command alone: the bootstrap is seeded (--bootstrap-seed), the page
names its command and no date or machine of its own, and the PNGs carry no software version or date, so the same
command over the same results.json writes the same bytes (tests/test_report.py). Pages are never edited by hand:
what a page says comes from benchmark/specs.py, the records, or this file.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmark import grid, specs

ROOT = Path(__file__).resolve().parent.parent
REPS = 2000  # bootstrap resamples


def collect(runs_root: Path | None, runs: list[grid.Run], archive: Path | None = None) -> tuple[dict, list[str]]:
    """{run name: (results, its evaluation at the run's steps)} of complete runs, and the others, each with why.
    A run the runs root does not hold complete with the steps asked is taken from the archive if it holds it so
    (runs_root None: the archive alone)."""
    found, missing = {}, []
    for run in runs:
        results = grid.read_results(runs_root / run.name) if runs_root else None
        if runs_root is None or grid.state(runs_root / run.name, run.steps) != "complete":
            results = grid.archived(archive, run) or results
        entry = next((e for e in (results or {}).get("evaluations", []) if e.get("step") == run.steps), None)
        if results is None:
            missing.append(f"`{run.name}` (not run)")
        elif results.get("status") != "complete":
            why = results.get("error") or f"at step {(results.get('final') or {}).get('step', 0)}"
            missing.append(f"`{run.name}` ({results.get('status')}: {why})")
        elif entry is None:
            missing.append(f"`{run.name}` (complete, but no evaluation at step {run.steps})")
        else:
            found[run.name] = (results, entry)
    return found, missing


def iqm_interval(scores: np.ndarray, reps: int, seed: int = 0) -> tuple[float, float, float]:
    """IQM of a [seeds, groups] score matrix and its 95% interval, resampling seeds within each group. Every interval's
    bootstrap starts from `seed`, so it depends on its scores alone, not on the cells computed before it. rliable 1.2's
    StratifiedBootstrap draws its indices from numpy's global generator whatever its `random_state` says: that generator
    is seeded here, and given back as it was."""
    from rliable import library as rly
    from rliable import metrics

    if scores.shape[0] < 2:  # nothing to resample
        value = float(metrics.aggregate_iqm(scores))
        return value, value, value
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        point, interval = rly.get_interval_estimates({"m": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    finally:
        np.random.set_state(saved)
    return float(point["m"][0]), float(interval["m"][0, 0]), float(interval["m"][1, 0])


def curves(path: Path, title: str, series: dict[str, list[list[dict]]], metric: str) -> None:
    """Mean ± std over seeds of `metric` against the step, one line per method, at the steps every seed evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, evaluations in series.items():
        steps = sorted(set.intersection(*[{e["step"] for e in evals if metric in e} for evals in evaluations]))
        if not steps:
            continue
        values = np.array([[next(e[metric] for e in evals if e["step"] == s) for s in steps] for evals in evaluations])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=f"{method} ({len(evaluations)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="gradient steps per agent", ylabel=metric.replace("_", " "), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no matplotlib version: the bytes are the plot's alone
    plt.close(fig)


def along_training(cells: dict, metric: str, last: int, rows: int = 8) -> list[str]:
    """A markdown table of `metric` (mean ± std over seeds) at the first and about `rows` evenly spaced steps that
    every run evaluated, the last included, one column per method, and the mean lambda_vd of the last batch for methods
    that log it; its last row is each run's mean over all its evaluations up to `last` (training_mean), over seeds."""
    evaluations = {m: [[e for e in r["evaluations"] if e["step"] <= last] for r, _ in c] for m, c in cells.items() if c}
    common = sorted(set.intersection(*[{e["step"] for e in evals if metric in e} for runs in evaluations.values() for evals in runs]))
    if len(common) < 2:
        return []
    picked = sorted({common[0], *common[::-1][:: -(-len(common) // rows)]})  # the first, and evenly back from the last
    weighted = [m for m, runs in evaluations.items() if all("lambda_vd_mean" in e for evals in runs for e in evals if e["step"] in picked)]
    header = ["step", *evaluations, *(f"{m}: mean λ_vd" for m in weighted)]
    lines = ["Along training: mean ± std over seeds (population std, ddof 0) at the steps every run evaluated and, in the last "
             f"row, of each run's mean over all its evaluations up to step {last}:", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step in picked:
        at = {m: [next(e for e in evals if e["step"] == step) for evals in runs] for m, runs in evaluations.items()}
        lines.append("| " + " | ".join([str(step), *(mean_std([e[metric] for e in at[m]]) for m in evaluations),
                                        *(f"{np.mean([e['lambda_vd_mean'] for e in at[m]]):.3f}" for m in weighted)]) + " |")
    lines.append("| " + " | ".join(["mean of every evaluation", *(mean_std([training_mean(r, metric, last) for r, _ in cells[m]])
                                                                  for m in evaluations), *("" for _ in weighted)]) + " |")
    return ["", *lines]


# Table 6 of the paper is the value difference among agents averaged "during training", not at the end
ALONG_TRAINING = ("value_difference",)


def training_mean(results: dict, metric: str, last: int) -> float | None:
    """A run's mean of `metric` over its evaluations up to step `last`."""
    values = [e[metric] for e in results.get("evaluations", []) if e.get("step", 0) <= last and e.get(metric) is not None]
    return float(np.mean(values)) if values else None


def mean_std(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else ""  # np.std: ddof 0, the population std


# Archives other than the project's own (benchmark/results/runs), by folder name: what their runs are. A page
# made from one says so under its title, from here (never by hand).
ARCHIVES = {
    "runs-float32": "These runs learned from the multi-agent MuJoCo datasets of the first recipe, whose behaviour actors "
                    "computed in float32, so their bytes depended on the machine that built them (docs/datasets.md, "
                    "\"The same bytes on every machine\"). They are kept in `benchmark/results/runs-float32/` as the record "
                    "of the grids run before the datasets were made portable (2026-12-02); the project's runs on the "
                    "portable (float64) datasets are in `benchmark/results/runs/` and their pages.",
}


def shared_flags(args, grid_runs: bool = False) -> list[str]:
    """The flags benchmark.grid and benchmark.report share, as given (beyond their defaults); for the grid
    (grid_runs), without the report's `--runs-root none` (the archive alone)."""
    words = []
    if args.scale != "reduced":
        words += ["--scale", args.scale]
    if args.seeds:
        words += ["--seeds", *map(str, args.seeds)]
    if args.runs_root == "none":
        words += [] if grid_runs else ["--runs-root", "none"]
    elif Path(args.runs_root).resolve() != grid.DEFAULT_RUNS_ROOT:
        words += ["--runs-root", args.runs_root]
    if args.spec_file:
        words += ["--spec-file", args.spec_file]
    if args.archive:
        words += ["--archive", args.archive]
    return words


def grid_command(args) -> str:
    """The `benchmark.grid` command that makes (or completes) the runs this page reports."""
    return shlex.join(["python", "-m", "benchmark.grid", args.table, *shared_flags(args, grid_runs=True)])


def report_command(args) -> str:
    """The `benchmark.report` command that writes this page (--out aside: where it goes does not change it)."""
    words = ["python", "-m", "benchmark.report", args.table, *shared_flags(args)]
    if args.reps != REPS:
        words += ["--reps", str(args.reps)]
    if args.bootstrap_seed != 0:
        words += ["--bootstrap-seed", str(args.bootstrap_seed)]
    if args.page != args.table:
        words += ["--page", args.page]
    return shlex.join(words)


def machine(found: dict) -> str:
    """When and where the runs ran (results.json `started`, `updated`, `host`, `cpu`, `threads`, `versions`) and their
    CPU time (`seconds` x threads): facts of the records, the same at every rerun of the report."""
    hosts, cpu_seconds, versions = {}, 0.0, set()
    dates = sorted(d[:10] for results, _ in found.values() for d in (results.get("started"), results.get("updated")) if d)
    for results, _ in found.values():
        cpu = results.get("cpu")  # absent before 2026-12-02
        host = f"{results.get('host')}" + (f", {cpu['model']}, torch {cpu['torch_capability']} kernels" if cpu else ", CPU not recorded")
        host += f", MKL_CBWR={cpu['mkl_cbwr']}" if cpu and cpu.get("mkl_cbwr") else ""  # recorded since 2026-12-05
        hosts[host] = hosts.get(host, 0) + 1
        threads = results.get("threads")
        cpu_seconds += results.get("seconds", 0.0) * (threads if isinstance(threads, int) else 1)
        versions.add(", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items() if k in ("python", "torch")))
    when = (f"Runs made {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else "") + " (results.json `started`, `updated`) "
            if dates else "Runs made ")
    where = ", ".join(f"`{h}` ({n} run{'s' if n != 1 else ''})" for h, n in hosts.items())
    return (f"{when}on {where}; versions: {'; '.join(sorted(versions))}. "
            f"Total CPU time of the runs shown: {cpu_seconds / 3600:.2f} CPU-hours (results.json `seconds` x `threads`, "
            f"summed over resumes).")


def lambda_tn_tail(cells: dict) -> str:
    """λ_tn of each agent over its whole dataset, before the cap (results.json `lambda_tn`: p1, median, p99, max and the
    share above --tn-max), as ranges over a method's seeds and agents, for the methods whose runs record it."""

    def span(agents, key, form):
        low, high = form(min(a[key] for a in agents)), form(max(a[key] for a in agents))
        return low if low == high else f"{low}–{high}"

    parts = []
    for method, cell in cells.items():
        agents = [a for results, _ in cell for a in (results.get("lambda_tn") or {}).values() if isinstance(a, dict)]
        if not agents or not all(k in a for a in agents for k in ("p1", "median", "p99", "max", "capped")):
            continue
        three, share = (lambda x: f"{x:.3g}"), (lambda x: f"{100 * x:.2f}%")
        parts.append(f"{method} ({len(agents)} agents): 1st percentile {span(agents, 'p1', three)}, median "
                     f"{span(agents, 'median', three)}, 99th percentile {span(agents, 'p99', three)}, above the cap "
                     f"{span(agents, 'capped', share)}, largest {span(agents, 'max', lambda x: f'{x:.2g}')}")
    if not parts:
        return ""
    return ("λ_tn of each agent over its whole dataset before the cap `--tn-max` (results.json `lambda_tn`), lowest–highest "
            "over the seeds and agents: " + "; ".join(parts) + ".")


def dirty(results: dict) -> str | None:
    """Why a run's code is in no commit (results.json `git_commit` null, or ending in `+dirty`), or None."""
    if grid.uncommitted(results) is None:
        return None
    commit = results.get("git_commit")
    return f"`{commit.removesuffix('+dirty')[:7]}+dirty`" if commit else "no `git_commit` (outside a git checkout)"


def uncommitted(cells: dict) -> str:
    """A group's runs made from a tree with uncommitted changes: their code is in no commit, so no checkout remakes them."""
    marked = {}  # why -> [method sN]
    for method, cell in cells.items():
        for results, _ in cell:
            why = dirty(results)
            if why:
                marked.setdefault(why, []).append(f"{method} s{(results.get('args') or {}).get('seed')}")
    if not marked:
        return ""
    n, total = sum(len(v) for v in marked.values()), sum(len(c) for c in cells.values())
    which = "; ".join(f"{why}: {', '.join(runs)}" for why, runs in marked.items())
    if n == total:
        which = next(iter(marked)) if len(marked) == 1 else "; ".join(
            f"{why}: {len(runs)} run{'s' if len(runs) > 1 else ''}" for why, runs in marked.items())
    subject = ("The one run of this group was" if total == 1 else f"Every one of this group's {total} runs was" if n == total
               else f"{n} of this group's {total} runs {'was' if n == 1 else 'were'}")
    return (f"**{subject} made from a tree with uncommitted changes**, so no commit holds the code that made "
            f"{'it' if n == 1 else 'them'} "
            f"(results.json `git_commit`; benchmark.grid no longer archives such runs): {which}.")


def datasets(cells: dict) -> str:
    """Which dataset each run of a group learned from (results.json `dataset.fingerprint`: the SHA-256 of every agent's
    file, shown by its first 8 hex digits). Another recipe, or before 2026-12-02 the same recipe built on another
    machine (docs/datasets.md), gives other bytes: a group whose runs used more than one dataset says so, and which seeds
    used which. Runs with different partitions (`env_kwargs.partition`, e.g. Table 10's 2x3 split against its 1x6
    single agent) split one source into different files by design: each partition is compared with itself."""
    used = {}  # (partition, fingerprint label) -> {seed: runs}
    for cell in cells.values():
        for results, _ in cell:
            fingerprint = (results.get("dataset") or {}).get("fingerprint")
            label = "/".join(f"`{h[:8]}`" for _, h in sorted(fingerprint.items())) if isinstance(fingerprint, dict) else "not recorded"
            partition = (results.get("env_kwargs") or {}).get("partition")
            seeds = used.setdefault((partition, label), {})
            seed = (results.get("args") or {}).get("seed")
            seeds[seed] = seeds.get(seed, 0) + 1
    partitions = {partition for partition, _ in used}
    name = lambda partition, label: f"partition {partition}: {label}" if len(partitions) > 1 else label  # noqa: E731
    runs = lambda seeds: f"{sum(seeds.values())} run{'s' if sum(seeds.values()) != 1 else ''}"  # noqa: E731
    if len(used) == 1:
        return f"Dataset (SHA-256 of each agent's file, first 8 hex digits): {name(*next(iter(used)))}, every run."
    if len(used) == len(partitions):  # one dataset per partition
        return ("Dataset per partition (SHA-256 of each agent's file, first 8 hex digits; one source split once per partition, "
                "docs/datasets.md): " + "; ".join(f"{name(*key)}, every run ({runs(seeds)})" for key, seeds in used.items()) + ".")
    parts = [f"{name(*key)}: seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in sorted(seeds, key=lambda s: (s is None, s or 0)))} "
             f"({runs(seeds)})" for key, seeds in sorted(used.items(), key=lambda kv: -sum(kv[1].values()))]
    return (f"**The runs of this group learned from {len(used)} different datasets** (SHA-256 of each agent's file, "
            f"first 8 hex digits; docs/datasets.md): " + "; ".join(parts) + ".")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help=f"one of {', '.join(specs.TABLES)} (or a name for --spec-file)")
    parser.add_argument("--scale", choices=["reduced", "paper"], default="reduced", help="as given to benchmark.grid")
    parser.add_argument("--seeds", type=int, nargs="+", help="as given to benchmark.grid")
    parser.add_argument("--runs-root", default=str(grid.DEFAULT_RUNS_ROOT),
                        help="as given to benchmark.grid (default: runs/grid); `none`: the archive's runs alone")
    parser.add_argument("--spec-file", help="the table as JSON, as given to benchmark.grid")
    parser.add_argument("--archive", help="as given to benchmark.grid (default: benchmark/results/runs with the default runs root)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="results/<page>.md and img/<page>_*.png go here (default: docs/)")
    parser.add_argument("--page", help="the page's name: results/<page>.md, img/<page>_<group>.png (default: the table's)")
    parser.add_argument("--reps", type=int, default=REPS, help=f"bootstrap resamples of the IQM intervals (default {REPS})")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of every bootstrap (default 0)")
    args = parser.parse_args(argv)
    args.page = args.page or args.table
    table = specs.load(args.table, args.spec_file)
    runs_root = None if args.runs_root == "none" else Path(args.runs_root).resolve()
    out = Path(args.out)
    archive = grid.archive_root(args.archive, runs_root)
    runs = grid.expand(args.table, table, args.scale, args.seeds)
    found, missing = collect(runs_root, runs, archive)
    n_dirty = sum(dirty(results) is not None for results, _ in found.values())
    lines = [f"# {table.title}", ""]
    if archive and archive.name in ARCHIVES and archive != grid.DEFAULT_ARCHIVE:
        lines += [f"*{ARCHIVES[archive.name]}*", ""]
    lines += [f"Made by `{report_command(args)}` from the runs of `{grid_command(args)}`. "
              f"{len(found)} of {len(runs)} runs complete. " + (machine(found) if found else "")
              + (f" {n_dirty} of them {'was' if n_dirty == 1 else 'were'} made from a tree with uncommitted changes (marked in "
                 "their groups)." if n_dirty else ""), ""]
    if table.note:
        lines += [table.note, ""]
    lines += [f"IQM: the interquartile mean over seeds with a 95% stratified bootstrap interval (rliable, {args.reps} "
              f"resamples, seed {args.bootstrap_seed}). A column marked 'mean along training' takes each run's mean over its "
              "evaluations instead of its last (the paper's Table 6). The 'paper' column is the paper's number as printed there.", ""]
    per_method = {}  # method -> {group: [seed values]} for the aggregate
    for group in table.groups:
        gname = grid.slug(group.name)
        cells = {m: [found[r.name] for r in runs if (r.group, r.method) == (group.name, m) and r.name in found]
                 for m in group.methods}
        steps = group.steps[args.scale]
        lines += [f"## {group.name}", "", f"`{' '.join(group.flags)}`, {steps} steps, `{group.metric}`. A cell is the mean ± "
                  f"std over seeds (population std, ddof 0) of each run's evaluation at step {steps}, (n) seeds:", ""]
        header = ["method", f"{group.metric} mean ± std (n)", "IQM [95% CI]",
                  *(f"{k} (mean along training)" if k in ALONG_TRAINING else k for k in group.extra_metrics), "paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, cell in cells.items():
            values = np.array([entry[group.metric] for _, entry in cell])
            if len(values):
                point, low, high = iqm_interval(values.reshape(-1, 1), args.reps, args.bootstrap_seed)
                if len(values) == sum((r.group, r.method) == (group.name, method) for r in runs):  # every seed the spec asks for
                    per_method.setdefault(method, {})[group.name] = values
                row = [method, f"{mean_std(values)} ({len(values)})", f"{point:.2f} [{low:.2f}, {high:.2f}]",
                       *(mean_std([training_mean(r, k, steps) if k in ALONG_TRAINING else entry.get(k) for r, entry in cell])
                         for k in group.extra_metrics)]
            else:
                row = [method, "missing", "", *("" for _ in group.extra_metrics)]
            lines.append("| " + " | ".join([*row, group.paper.get(method, "")]) + " |")
        if any(cells.values()):
            lines += ["", datasets(cells)]
            for extra in (lambda_tn_tail(cells), uncommitted(cells)):
                if extra:
                    lines += ["", extra]
            image = out / "img" / f"{args.page}_{gname}.png"
            curves(image, f"{args.table}: {group.name}", {m: [[e for e in r["evaluations"] if e["step"] <= steps] for r, _ in c]
                                                          for m, c in cells.items() if c}, group.metric)
            lines += ["", f"![{group.name}](../img/{image.name})", *along_training(cells, group.metric, steps)]
        lines.append("")
    if table.aggregate and per_method:
        lines += ["## All groups", "", "IQM over every group and seed, the bootstrap resampling seeds within each group "
                  "(for each method the groups where it has every seed the spec asks for, and only methods with the same "
                  "number of seeds in each):", "",
                  "| method | groups | IQM [95% CI] |", "|---|---|---|"]
        for method, by_group in per_method.items():
            sizes = {len(v) for v in by_group.values()}
            if len(sizes) == 1:
                point, low, high = iqm_interval(np.stack(list(by_group.values()), axis=1), args.reps, args.bootstrap_seed)
                lines.append(f"| {method} | {len(by_group)} | {point:.2f} [{low:.2f}, {high:.2f}] |")
        lines.append("")
    if missing:
        lines += [f"Missing ({len(missing)}):", "", *(f"- {m}" for m in missing), ""]
    target = out / "results" / f"{args.page}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, target)
    print(f"{target}: {len(found)} complete runs, {len(missing)} missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
