"""A paper table from its grid's results.json files: markdown with the paper's numbers, and learning curves.

    python -m benchmark.report table9                         # docs/results/table9.md, docs/img/table9_*.png
    python -m benchmark.report table5 --scale paper           # the runs of `benchmark.grid table5 --scale paper`
    python -m benchmark.report table9 --out /tmp/r            # elsewhere

Reads only `<runs root>/<table>/*/results.json` (docs/results.md), and for a run not complete there the
committed archive's copy (`benchmark/results/runs/<table>/<run>.json`, benchmark/grid.py). Only complete runs count,
and from each the evaluation at the scale's step (the last one, or an earlier one of a run
trained longer); the others are listed as missing, with why. Per cell: mean ± std over seeds
of that evaluation's metric, n, and the interquartile mean with a 95% stratified bootstrap
interval over seeds (rliable, Agarwal et al. 2021); for tables whose cells share one scale,
also an IQM per method over every group and seed. Curves: mean ± std over seeds, x = step. Per group, the
datasets its runs learned from (results.json `dataset.fingerprint`), flagged when they are more than one.
"""

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmark import grid, specs

ROOT = Path(__file__).resolve().parent.parent


def collect(runs_root: Path, runs: list[grid.Run], archive: Path | None = None) -> tuple[dict, list[str]]:
    """{run name: (results, its evaluation at the run's steps)} of complete runs, and the others, each with why.
    A run the runs root does not hold complete with the steps asked is taken from the archive if it holds it so."""
    found, missing = {}, []
    for run in runs:
        results = grid.read_results(runs_root / run.name)
        if grid.state(runs_root / run.name, run.steps) != "complete":
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


def iqm_interval(scores: np.ndarray, reps: int) -> tuple[float, float, float]:
    """IQM of a [seeds, groups] score matrix and its 95% interval, resampling seeds within each group."""
    from rliable import library as rly
    from rliable import metrics

    if scores.shape[0] < 2:  # nothing to resample
        value = float(metrics.aggregate_iqm(scores))
        return value, value, value
    point, interval = rly.get_interval_estimates({"m": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def along_training(cells: dict, metric: str, last: int, rows: int = 8) -> list[str]:
    """A markdown table of `metric` (mean ± std over seeds) at the first and about `rows` evenly spaced steps that
    every run evaluated, the last included, one column per method, and the mean lambda_vd of the last batch for methods that log it."""
    evaluations = {m: [[e for e in r["evaluations"] if e["step"] <= last] for r, _ in c] for m, c in cells.items() if c}
    common = sorted(set.intersection(*[{e["step"] for e in evals if metric in e} for runs in evaluations.values() for evals in runs]))
    if len(common) < 2:
        return []
    picked = sorted({common[0], *common[::-1][:: -(-len(common) // rows)]})  # the first, and evenly back from the last
    weighted = [m for m, runs in evaluations.items() if all("lambda_vd_mean" in e for evals in runs for e in evals if e["step"] in picked)]
    header = ["step", *evaluations, *(f"{m}: mean λ_vd" for m in weighted)]
    lines = ["Along training (mean ± std over seeds at the steps every run evaluated):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step in picked:
        at = {m: [next(e for e in evals if e["step"] == step) for evals in runs] for m, runs in evaluations.items()}
        lines.append("| " + " | ".join([str(step), *(mean_std([e[metric] for e in at[m]]) for m in evaluations),
                                        *(f"{np.mean([e['lambda_vd_mean'] for e in at[m]]):.3f}" for m in weighted)]) + " |")
    return ["", *lines]


# Table 6 of the paper is the value difference among agents averaged "during training", not at the end
ALONG_TRAINING = ("value_difference",)


def training_mean(results: dict, metric: str, last: int) -> float | None:
    """A run's mean of `metric` over its evaluations up to step `last`."""
    values = [e[metric] for e in results.get("evaluations", []) if e.get("step", 0) <= last and e.get(metric) is not None]
    return float(np.mean(values)) if values else None


def mean_std(values) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else ""


def grid_command(args) -> str:
    """The `benchmark.grid` command that makes (or completes) the runs this page reports."""
    words = ["python", "-m", "benchmark.grid", args.table]
    if args.scale != "reduced":
        words += ["--scale", args.scale]
    if args.seeds:
        words += ["--seeds", *map(str, args.seeds)]
    if Path(args.runs_root).resolve() != grid.DEFAULT_RUNS_ROOT:
        words += ["--runs-root", args.runs_root]
    if args.spec_file:
        words += ["--spec-file", args.spec_file]
    if args.archive:
        words += ["--archive", args.archive]
    return shlex.join(words)


def machine(found: dict) -> str:
    """Where the runs ran (results.json `host`, `cpu`, `threads`, `versions`) and their CPU time (`seconds` x threads)."""
    hosts, cpu_seconds, versions = {}, 0.0, set()
    for results, _ in found.values():
        cpu = results.get("cpu")  # absent before 2026-12-02
        host = f"{results.get('host')}" + (f", {cpu['model']}, torch {cpu['torch_capability']} kernels" if cpu else ", CPU not recorded")
        hosts[host] = hosts.get(host, 0) + 1
        threads = results.get("threads")
        cpu_seconds += results.get("seconds", 0.0) * (threads if isinstance(threads, int) else 1)
        versions.add(", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items() if k in ("python", "torch")))
    return (f"Runs on {', '.join(f'`{h}` ({n} runs)' for h, n in hosts.items())}; versions: {'; '.join(sorted(versions))}. "
            f"Total CPU time of the runs shown: {cpu_seconds / 3600:.2f} CPU-hours (results.json `seconds` x `threads`, "
            f"summed over resumes). Report written on {platform.platform()}, {os.cpu_count()} cores.")


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
    parser.add_argument("--runs-root", default=str(grid.DEFAULT_RUNS_ROOT), help="as given to benchmark.grid (default: runs/grid)")
    parser.add_argument("--spec-file", help="the table as JSON, as given to benchmark.grid")
    parser.add_argument("--archive", help="as given to benchmark.grid (default: benchmark/results/runs with the default runs root)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="results/<table>.md and img/<table>_*.png go here (default: docs/)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the IQM intervals (default 2000)")
    args = parser.parse_args(argv)
    table = specs.load(args.table, args.spec_file)
    runs_root, out = Path(args.runs_root).resolve(), Path(args.out)
    runs = grid.expand(args.table, table, args.scale, args.seeds)
    found, missing = collect(runs_root, runs, grid.archive_root(args.archive, runs_root))
    lines = [f"# {table.title}", "", f"Made by `{grid_command(args)}` and `python -m benchmark.report {args.table}"
             f"{' --scale paper' if args.scale == 'paper' else ''}` on {time.strftime('%Y-%m-%d')}. "
             f"{len(found)} of {len(runs)} runs complete. " + (machine(found) if found else ""), ""]
    if table.note:
        lines += [table.note, ""]
    lines += ["Mean ± std over seeds (population std) of each run's evaluation at the last step, n seeds; "
              f"IQM with a 95% bootstrap interval over seeds (rliable, {args.reps} resamples). A column marked "
              "'mean along training' takes each run's mean over its evaluations instead (the paper's Table 6).", ""]
    per_method = {}  # method -> {group: [seed values]} for the aggregate
    for group in table.groups:
        gname = grid.slug(group.name)
        cells = {m: [found[r.name] for r in runs if (r.group, r.method) == (group.name, m) and r.name in found]
                 for m in group.methods}
        steps = group.steps[args.scale]
        lines += [f"## {group.name}", "", f"`{' '.join(group.flags)}`, {steps} steps, `{group.metric}`:", ""]
        header = ["method", f"{group.metric} mean ± std (n)", "IQM [95% CI]",
                  *(f"{k} (mean along training)" if k in ALONG_TRAINING else k for k in group.extra_metrics), "paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, cell in cells.items():
            values = np.array([entry[group.metric] for _, entry in cell])
            if len(values):
                point, low, high = iqm_interval(values.reshape(-1, 1), args.reps)
                per_method.setdefault(method, {})[group.name] = values
                row = [method, f"{mean_std(values)} ({len(values)})", f"{point:.2f} [{low:.2f}, {high:.2f}]",
                       *(mean_std([training_mean(r, k, steps) if k in ALONG_TRAINING else entry.get(k) for r, entry in cell])
                         for k in group.extra_metrics)]
            else:
                row = [method, "missing", "", *("" for _ in group.extra_metrics)]
            lines.append("| " + " | ".join([*row, group.paper.get(method, "")]) + " |")
        if any(cells.values()):
            lines += ["", datasets(cells)]
            image = out / "img" / f"{args.table}_{gname}.png"
            curves(image, f"{args.table}: {group.name}", {m: [[e for e in r["evaluations"] if e["step"] <= steps] for r, _ in c]
                                                          for m, c in cells.items() if c}, group.metric)
            lines += ["", f"![{group.name}](../img/{image.name})", *along_training(cells, group.metric, steps)]
        lines.append("")
    if table.aggregate and per_method:
        lines += ["## All groups", "", "IQM over every group and seed, the bootstrap resampling seeds within each group "
                  "(methods with the same number of complete seeds in every group only):", "",
                  "| method | groups | IQM [95% CI] |", "|---|---|---|"]
        for method, by_group in per_method.items():
            sizes = {len(v) for v in by_group.values()}
            if len(sizes) == 1:
                point, low, high = iqm_interval(np.stack(list(by_group.values()), axis=1), args.reps)
                lines.append(f"| {method} | {len(by_group)} | {point:.2f} [{low:.2f}, {high:.2f}] |")
        lines.append("")
    if missing:
        lines += [f"Missing ({len(missing)}):", "", *(f"- {m}" for m in missing), ""]
    target = out / "results" / f"{args.table}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, target)
    print(f"{target}: {len(found)} complete runs, {len(missing)} missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
