"""Do the MuJoCo datasets' behaviour actions depend on which DGEMM kernel MKL picks on this CPU?

The MuJoCo recipes act with the shipped SAC actors in float64 (envs/behavior/sac.py), so every action is MKL's DGEMM.
This runs one shipped actor on fixed states in child processes under MKL settings and compares the actions bit for bit
with the default's, and prints the code path MKL reports for this CPU (MKL_VERBOSE's first line):

    python -m benchmark.mkl_kernels                     # walker2d-2x3's expert actor, 2,000 states, batches of 1 and 64

A setting whose actions differ from the default's changes a dataset built under it (docs/datasets.md, "same bytes").
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SETTINGS = {"the default again": {}, "MKL_ENABLE_INSTRUCTIONS=SSE4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
            "MKL_ENABLE_INSTRUCTIONS=AVX512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512"},
            "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"}, "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"}}


def actions(actor_path: str, states: int, batch: int, out: str) -> None:
    """The child: the actor's deterministic actions on `states` seeded normal states, `batch` rows per call."""
    from envs.behavior.sac import load_actor

    actor, _ = load_actor(actor_path)
    actor.double()
    x = torch.randn(states, actor.fc1.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save(torch.cat([actor.act(chunk) for chunk in x.split(batch)]), out)


def run(env: dict, actor_path: str, states: int, batch: int, folder: str) -> tuple[torch.Tensor, str]:
    out = os.path.join(folder, f"{len(os.listdir(folder))}.pt")
    proc = subprocess.run([sys.executable, "-m", "benchmark.mkl_kernels", "--child", out, "--actor", actor_path,
                           "--states", str(states), "--batch", str(batch)], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_VERBOSE": "1", **env})
    header = next((line for line in proc.stdout.splitlines() if "oneMKL" in line or "Intel(R) MKL" in line), "")
    return torch.load(out), header.removeprefix("MKL_VERBOSE ").strip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actor", default=str(Path("envs/behavior/weights/walker2d-2x3/expert.pt")))
    parser.add_argument("--states", type=int, default=2000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        actions(args.actor, args.states, args.batch[0], args.child)
        raise SystemExit(0)
    with tempfile.TemporaryDirectory() as folder:
        for batch in args.batch:
            default, header = run({}, args.actor, args.states, batch, folder)
            print(f"batch {batch}: default path: {header}")
            for name, env in SETTINGS.items():
                other, _ = run(env, args.actor, args.states, batch, folder)
                rows = int((other != default).any(-1).sum())
                print(f"  {name}: actions differ from the default's in {rows} of {len(default)} states "
                      f"(max |difference| {float((other - default).abs().max()):.1e})")
