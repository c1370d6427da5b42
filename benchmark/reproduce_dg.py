"""Reproduce Table 9 (MATD3+BC vs TD3+BC on DG) and the epsilon sweep of Figure 1c.

    python benchmark/reproduce_dg.py run --workers 2     # resumable: finished runs are skipped
    python benchmark/reproduce_dg.py report              # tables + docs/img/dg_curves.png

Every run is `python matd3bc.py ...` with the flags printed below; its results.json is
copied to benchmark/results/dg/<name>.json when it finishes, which is what `report` reads.
Each worker runs one torch thread (OMP_NUM_THREADS=1): on 2 cores two single-threaded
runs side by side finish more runs per hour than one run on two threads.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmark" / "results" / "dg"
SEEDS = [1, 2, 3, 4, 5]
ALGOS = {"matd3bc": [], "td3bc": ["--no-vd", "--no-tn"]}
STEPS = {"full": 30_000, "partial": 100_000}
PAPER = {"full": ("46.5 ± 0.9", "38.9 ± 0.8"), "partial": ("31.4 ± 0.6", "20.7 ± 0.6")}  # Table 9


def configs():
    runs = []
    for obs in ("full", "partial"):  # Table 9
        for algo, flags in ALGOS.items():
            for seed in SEEDS:
                runs.append((f"{algo}_{obs}_s{seed}", ["--obs", obs, "--seed", str(seed), "--total-steps", str(STEPS[obs]), *flags]))
    for seed in SEEDS[:3]:  # Figure 1c (0.9 is the Table 9 run); seed-major, so a cut-short sweep covers every epsilon
        for epsilon in ("0.1", "0.5", "0.99"):
            runs.append((f"matd3bc_full_eps{epsilon}_s{seed}", ["--obs", "full", "--seed", str(seed), "--total-steps", str(STEPS["full"]), "--epsilon", epsilon]))
    return runs


def run_one(name, flags, dataset_dir):
    target = OUT / f"{name}.json"
    if target.exists():
        return f"skip {name}"
    cmd = [sys.executable, "matd3bc.py", "--env-id", "dg", "--exp-name", name, "--eval-freq", "2500",
           "--dataset-dir", dataset_dir, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "60"}
    log = OUT / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        f.write(" ".join(cmd[1:]) + "\n")
        f.flush()
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        return f"FAILED {name} (exit {code}, see {log})"
    result = sorted(glob.glob(str(ROOT / "runs" / f"dg__{name}__*" / "results.json")))[-1]
    shutil.copy(result, str(target) + ".tmp")
    os.replace(str(target) + ".tmp", target)
    return f"done {name} in {time.time() - start:.0f}s"


def run(args):
    OUT.mkdir(parents=True, exist_ok=True)
    # build both datasets once, before the workers race for them
    for obs in ("full", "partial"):
        subprocess.check_call([sys.executable, "-m", "envs.collect", "--env-id", "dg", "--obs", obs,
                               "--dataset-dir", args.dataset_dir], cwd=ROOT)
    todo = [c for c in configs() if args.only in c[0]]
    with ThreadPoolExecutor(args.workers) as pool:
        for message in pool.map(lambda c: run_one(*c, args.dataset_dir), todo):
            print(message, flush=True)


def load(name):
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mean_std(values):
    import numpy as np

    return f"{np.mean(values):.1f} ± {np.std(values):.1f} ({len(values)})" if values else "—"


def report(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    print("Table 9: final team return (100 evaluation episodes per seed), mean ± std over seeds (number of seeds)")
    print("| observation | steps | MATD3+BC | TD3+BC | paper MATD3+BC | paper TD3+BC |")
    print("|---|---|---|---|---|---|")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, obs in zip(axes, ("full", "partial")):
        cells = []
        for algo in ALGOS:
            results = [r for r in (load(f"{algo}_{obs}_s{s}") for s in SEEDS) if r]
            cells.append(mean_std([r["final"]["team_return"] for r in results]))
            if results:
                steps = [e["step"] for e in results[0]["evaluations"]]
                curves = np.array([[e["team_return"] for e in r["evaluations"]] for r in results])
                ax.plot(steps, curves.mean(0), label=f"{'MATD3+BC' if algo == 'matd3bc' else 'TD3+BC'} ({len(results)} seeds)")
                ax.fill_between(steps, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.2)
        print(f"| {obs} | {STEPS[obs]} | {cells[0]} | {cells[1]} | {PAPER[obs][0]} | {PAPER[obs][1]} |")
        ax.set(title=f"DG, {obs} observation", xlabel="gradient steps per agent", ylabel="team return (100 steps)")
        ax.legend()
    print("\nAnalysis metrics at the final evaluation, mean ± std over seeds (number of seeds)")
    print("| observation | algorithm | value difference | extrapolation error | Q(start) | MC return (discounted) |")
    print("|---|---|---|---|---|---|")
    for obs in ("full", "partial"):
        for algo in ALGOS:
            finals = [r["final"] for r in (load(f"{algo}_{obs}_s{s}") for s in SEEDS) if r]
            cells = [mean_std([f[k] for f in finals]) for k in ("value_difference", "extrapolation_error", "q_start", "mc_return")]
            print(f"| {obs} | {'MATD3+BC' if algo == 'matd3bc' else 'TD3+BC'} | " + " | ".join(cells) + " |")
    print("\nTeam return along training, mean ± std over seeds (number of seeds)")
    print("| observation | steps | MATD3+BC | TD3+BC | MATD3+BC mean λ_vd |")
    print("|---|---|---|---|---|")
    for obs in ("full", "partial"):
        for step in (2500, 5000, 10000, 20000, 30000, 50000, 100000):
            if step > STEPS[obs]:
                continue
            cells = []
            for algo in ALGOS:
                evals = [next(e for e in r["evaluations"] if e["step"] == step)
                         for r in (load(f"{algo}_{obs}_s{s}") for s in SEEDS) if r]
                cells.append(mean_std([e["team_return"] for e in evals]))
                if algo == "matd3bc":
                    lambda_vd = np.mean([e["weights/lambda_vd_mean"] for e in evals]) if evals else float("nan")
            print(f"| {obs} | {step} | {cells[0]} | {cells[1]} | {lambda_vd:.3f} |")
    print("\nFigure 1c: MATD3+BC on DG (full observation), final team return by epsilon")
    print("| epsilon | team return | seeds |")
    print("|---|---|---|")
    eps_values, eps_means, eps_stds = [], [], []
    for epsilon in ("0.1", "0.5", "0.9", "0.99"):
        names = [f"matd3bc_full_s{s}" for s in SEEDS[:3]] if epsilon == "0.9" else [f"matd3bc_full_eps{epsilon}_s{s}" for s in SEEDS[:3]]
        values = [r["final"]["team_return"] for r in map(load, names) if r]
        print(f"| {epsilon} | {mean_std(values)} | {len(values)} |")
        if values:
            eps_values.append(float(epsilon))
            eps_means.append(np.mean(values))
            eps_stds.append(np.std(values))
    baseline = [r["final"]["team_return"] for r in (load(f"td3bc_full_s{s}") for s in SEEDS) if r]
    axes[2].errorbar(eps_values, eps_means, yerr=eps_stds, marker="o", capsize=4, label="MATD3+BC")
    if baseline:
        axes[2].axhline(np.mean(baseline), color="gray", linestyle="--", label=f"TD3+BC ({len(baseline)} seeds)")
    axes[2].set(title="DG full observation: optimism level", xlabel="epsilon", ylabel="final team return")
    axes[2].legend()
    fig.tight_layout()
    png = ROOT / "docs" / "img" / "dg_curves.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    print(f"\nwrote {png.relative_to(ROOT)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this, e.g. `eps`")
    parser.add_argument("--dataset-dir", default=os.environ.get("ODMARL_DATASET_DIR", "datasets"))
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)
