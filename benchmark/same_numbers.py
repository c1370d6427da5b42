"""Do two checkouts learn the same numbers? Tiny runs of every script and of every Table 5 row, their evaluations
(wall-clock times left out) and the SHA-256 of every saved agent tensor, as one JSON file per checkout.

    python -m benchmark.same_numbers --root /path/to/old/checkout --out old.json
    python -m benchmark.same_numbers --out new.json --compare old.json   # prints same / DIFFERENT per case

A restructuring that changes no number (docs/results.md) must print `same` for every case on the same machine.
The runs use one thread and a private dataset folder; the whole set takes a few minutes on one core.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("seconds", "train_seconds", "updates_per_second", "ms_per_update")
SCHEDULE = ["--total-steps", "1300", "--eval-freq", "650", "--save-model"]
DG = ["--env-id", "dg", "--n-transitions", "2000", "--vae-steps", "30", "--eval-episodes", "4", "--hidden-dim", "16",
      "--batch-size", "16", "--analysis-states", "100"]
HOPPER = ["--env-id", "hopper-3x1", "--n-transitions", "300", "--vae-steps", "20", "--eval-episodes", "1", "--hidden-dim", "8",
          "--batch-size", "16", "--n-samples", "2", "--analysis-states", "50", "--eval-episode-len", "50"]
MATRIX = ["--env-id", "matrix-game", "--n-episodes", "500", "--vae-steps", "30", "--eval-episodes", "4", "--hidden-dim", "16",
          "--batch-size", "16"]
SMAX = ["--env-id", "smax-3m", "--quality", "random", "--n-episodes", "20", "--vae-steps", "10", "--eval-episodes", "4",
        "--hidden-dim", "16", "--batch-size", "16"]
CASES = {
    "matd3bc dg": ("matd3bc.py", DG),
    "matd3bc dg TD3+BC": ("matd3bc.py", [*DG, "--no-vd", "--no-tn"]),
    "matd3bc cn": ("matd3bc.py", [*DG[2:], "--env-id", "cn"]),
    "mabcq_discrete matrix-game": ("mabcq_discrete.py", MATRIX),
    "mabcq_discrete matrix-game count": ("mabcq_discrete.py", [*MATRIX, "--tn-estimator", "count"]),
    "mabcq_discrete smax-3m": ("mabcq_discrete.py", [*SMAX, "--total-steps", "300", "--eval-freq", "150"]),
    "macql matrix-game": ("macql.py", MATRIX),
    "macql matrix-game CQL": ("macql.py", [*MATRIX, "--no-vd", "--no-tn"]),
    "macql smax-3m": ("macql.py", [*SMAX, "--total-steps", "300", "--eval-freq", "150"]),
    **{f"mabcq_continuous {row}": ("mabcq_continuous.py", [*HOPPER, *flags]) for row, flags in {
        "MABCQ": [], "BCQ w/ lambda_vd": ["--no-tn"], "BCQ w/ lambda_tn": ["--no-vd"], "BCQ": ["--no-vd", "--no-tn"],
        "DDPG": ["--ddpg"], "Behavior": ["--behavior"], "MABCQ train-generator": ["--train-generator"]}.items()},
    # the paper's batch, widths and n: the products at their real sizes (e.g. BCQ's target pass in chunks of states)
    "mabcq_continuous MABCQ batch 1024": ("mabcq_continuous.py", [
        "--env-id", "hopper-3x1", "--n-transitions", "300", "--vae-steps", "20", "--eval-episodes", "1",
        "--hidden-dim", "64", "--batch-size", "1024", "--analysis-states", "50", "--eval-episode-len", "50",
        "--total-steps", "200", "--eval-freq", "100"]),  # n = 10, the default
}


def tensor_hashes(obj, prefix="") -> dict:
    out = {}
    if torch.is_tensor(obj):
        out[prefix] = hashlib.sha256(obj.contiguous().numpy().tobytes()).hexdigest()[:16]
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(tensor_hashes(v, f"{prefix}/{k}"))
    return out


def run_case(root: Path, work: Path, script: str, flags: list[str]) -> dict:
    name = f"case{len(list((work / 'runs').glob('case*')))}" if (work / "runs").exists() else "case0"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(root / script), *flags, *(SCHEDULE if "--total-steps" not in flags else SCHEDULE[4:]),
           "--dataset-dir", str(work / "datasets"), "--run-name", name, "--threads", "1"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    run_dir = work / "runs" / name
    res = json.loads((run_dir / "results.json").read_text())
    evaluations = [{k: v for k, v in e.items() if k not in TIMING} for e in res["evaluations"]]
    agents = {p.name: tensor_hashes(torch.load(p, weights_only=True)) for p in sorted(run_dir.glob("agent_*.pt"))}
    return {"evaluations": evaluations, "agents": agents}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose scripts run (default: this one)")
    parser.add_argument("--out", required=True, help="where the JSON of every case goes")
    parser.add_argument("--compare", help="a JSON written by another checkout: print same / DIFFERENT per case")
    parser.add_argument("--only", help="only the cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as work:
        for case, (script, flags) in CASES.items():
            if args.only and args.only not in case:
                continue
            out[case] = run_case(Path(args.root).resolve(), Path(work), script, flags)
            print(f"{case}: {'error ' + out[case]['error'] if 'error' in out[case] else 'ran'}", flush=True)
    tmp = f"{args.out}.tmp-{os.getpid()}"
    Path(tmp).write_text(json.dumps(out, indent=1, sort_keys=True))
    os.replace(tmp, args.out)
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        for case in out:
            verdict = "same" if before.get(case) == out[case] else "DIFFERENT"
            print(f"{verdict:9s} {case}")


if __name__ == "__main__":
    main()
