"""A paper table from its grid's results.json files: markdown with the paper's numbers, and learning curves.

    python -m benchmark.report table9                 # docs/results/table9.md, docs/img/table9_*.png
    python -m benchmark.report table9 --out /tmp/r    # elsewhere

Reads only `runs/grid/<table>/*/results.json` (docs/results.md) under --workdir; only complete
runs count, unfinished or missing ones are listed. Per cell: mean ± std over seeds of the
final value of the table's metric, n, and the interquartile mean with a 95% stratified
bootstrap interval over seeds (rliable, Agarwal et al. 2021).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmark import grid, specs

ROOT = Path(__file__).resolve().parent.parent


def collect(workdir: Path, table_name: str, table: specs.Table, scale: str):
    """{(group, method): [results of complete runs]}, and the names of runs not complete."""
    cells, missing = {}, []
    for run in grid.expand(table_name, table, scale, None, None):
        group, method, _ = Path(run.name).name.split("__")
        path = workdir / "runs" / "grid" / run.name / "results.json"
        results = json.loads(path.read_text()) if path.exists() else None
        if results is None or results.get("status") != "complete":
            missing.append(run.name)
            continue
        cells.setdefault((group, method), []).append(results)
    return cells, missing


def iqm_interval(values: np.ndarray, reps: int) -> tuple[float, float, float]:
    from rliable import library as rly
    from rliable import metrics

    point, interval = rly.get_interval_estimates({"x": values.reshape(-1, 1)}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def curves(path: Path, title: str, series: dict[str, list[dict]], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in series.items():
        steps = sorted(set.intersection(*[{e["step"] for e in r["evaluations"] if metric in e} for r in runs]))
        if not steps:
            continue
        values = np.array([[next(e[metric] for e in r["evaluations"] if e["step"] == s) for s in steps] for r in runs])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=f"{method} ({len(runs)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="gradient steps per agent", ylabel=metric.replace("_", " "), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table")
    parser.add_argument("--scale", choices=["reduced", "paper"], default="reduced")
    parser.add_argument("--workdir", default=str(ROOT), help="where runs/ lives")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="results/<table>.md and img/<table>_*.png go here")
    parser.add_argument("--spec-file", help="the table as JSON, as given to benchmark.grid")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the IQM interval")
    args = parser.parse_args(argv)
    table = specs.load(args.table, args.spec_file)
    workdir, out = Path(args.workdir).resolve(), Path(args.out)
    cells, missing = collect(workdir, args.table, table, args.scale)
    lines = [f"# {table.title}", "",
             f"Made by `python -m benchmark.grid {args.table}{' --scale paper' if args.scale == 'paper' else ''}` then "
             f"`python -m benchmark.report {args.table}` ({time.strftime('%Y-%m-%d')}), from the runs' results.json. "
             f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.", ""]
    if table.note:
        lines += [table.note, ""]
    cpu_seconds = 0.0
    for group in table.groups:
        gname = grid.slug(group.name)
        present = {m: cells.get((gname, grid.slug(m)), []) for m in group.methods}
        if not any(present.values()):
            continue
        steps = group.steps[args.scale]
        lines += [f"## {group.name}", "", f"`{' '.join(group.flags)}`, {steps} steps, final `{group.metric}`"
                  + (f" (and {', '.join(group.extra_metrics)})" if group.extra_metrics else "") + ":", ""]
        header = ["method", "mean ± std (n)", "IQM [95% CI]", *group.extra_metrics, "paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, runs in present.items():
            if not runs:
                lines.append(f"| {method} | missing | | {' | '.join('' for _ in group.extra_metrics)}{' | ' if group.extra_metrics else ''}{group.paper.get(method, '')} |")
                continue
            values = np.array([r["final"][group.metric] for r in runs])
            point, low, high = iqm_interval(values, args.reps) if len(values) > 1 else (values[0], values[0], values[0])
            extras = [f"{np.mean([r['final'].get(k, np.nan) for r in runs]):.2f}" for k in group.extra_metrics]
            lines.append(f"| {method} | {values.mean():.2f} ± {values.std():.2f} ({len(values)}) | {point:.2f} [{low:.2f}, {high:.2f}] | "
                         + "".join(f"{e} | " for e in extras) + f"{group.paper.get(method, '')} |")
            cpu_seconds += sum(r.get("seconds", 0.0) for r in runs)
        image = out / "img" / f"{args.table}_{gname}.png"
        curves(image, f"{args.table}: {group.name}", {m: r for m, r in present.items() if r}, group.metric)
        lines += ["", f"![{group.name}](../img/{image.name})", ""]
    lines += [f"Training time of the runs shown: {cpu_seconds / 3600:.2f} hours (sum over runs of results.json `seconds`).", ""]
    if missing:
        lines += [f"Not complete ({len(missing)}): " + ", ".join(f"`{m}`" for m in missing), ""]
    target = out / "results" / f"{args.table}.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, target)
    print(f"{target}: {sum(len(v) for v in cells.values())} complete runs, {len(missing)} missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
