"""Print the behaviour-policy tables of docs/datasets.md from the learners' returns.json files.

    python benchmark/behavior_table.py                   # envs/behavior/weights/*/returns.json
    python benchmark/behavior_table.py --runs runs       # also: training wall-clock from the TensorBoard logs

SAC (multi-agent MuJoCo): the early / intermediate / expert actors' evaluation returns
(10 deterministic episodes), D4RL-normalised, and the env step each was saved at.
MAPPO (SMAX): the expert's and the medium actor's win rate (200 sampled episodes) and the
learner's env steps and seconds.
"""

import argparse
import sys
import json
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmark/...`
from envs import mamujoco, smax
from envs.behavior.sac import PRESETS


def wall_clock_minutes(run_dir: Path) -> float | None:
    """Minutes between the first and last TensorBoard scalar, gaps over 5 minutes (interruptions) left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    times = []
    for f in sorted(run_dir.glob("events*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            times += [e.wall_time for e in acc.Scalars(tag)]
    if len(times) < 2:
        return None
    gaps = np.diff(np.sort(times))
    return float(gaps[gaps < 300].sum() / 60)


def sac_rows(weights: Path, runs: Path | None) -> list[str]:
    rows = ["| env id | early | intermediate | expert | env steps trained | wall-clock |", "|---|---|---|---|---|---|"]
    for env_id in mamujoco.TASKS:
        path = weights / env_id / "returns.json"
        if not path.exists():
            rows.append(f"| {env_id} | – | – | – | not trained | |")
            continue
        record = json.loads(path.read_text())
        cells = []
        for level in mamujoco.LEVELS:
            info = record["levels"].get(level)
            cells.append(f"{info['eval_return']:.0f} ({info['normalized_score']:.1f}) @ {info['step'] // 1000}k" if info else "–")
        steps = record["evaluations"][-1]["step"] if record["evaluations"] else 0
        budget = record["args"]["total_timesteps"] or PRESETS[env_id]["total_timesteps"]
        minutes = wall_clock_minutes(runs / f"{env_id}__sac__1") if runs else None
        rows.append(f"| {env_id} | " + " | ".join(cells) + f" | {steps:,}{'' if steps >= budget else f' of {budget:,} (in training)'} "
                    f"| {f'{minutes:.0f} min' if minutes else ''} |")
    return rows


def mappo_rows(weights: Path) -> list[str]:
    rows = ["| env id | expert win rate (return) | medium win rate (return) | env steps | training time |", "|---|---|---|---|---|"]
    for env_id in smax.MAPS:
        path = weights / env_id / "returns.json"
        if not path.exists():
            rows.append(f"| {env_id} | – | – | not trained | |")
            continue
        record = json.loads(path.read_text())
        last = record["evaluations"][-1]
        level = lambda name: f"{record[name]['win_rate']:.3f} ({record[name]['return_mean']:.1f}) @ {record[name]['env_step'] // 1000}k"  # noqa: E731
        rows.append(f"| {env_id} | {level('expert')} | {level('medium')} | {last['env_step']:,} | {last['seconds'] / 60:.1f} min |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", default=str(mamujoco.BEHAVIOR_DIR))
    parser.add_argument("--runs", default=None, help="the runs/ folder, for SAC wall-clock times from TensorBoard")
    args = parser.parse_args()
    weights = Path(args.weights_dir)
    print("SAC, evaluation return (D4RL-normalised) @ env step saved")
    print("\n".join(sac_rows(weights, Path(args.runs) if args.runs else None)), end="\n\n")
    print("MAPPO vs SMAX's heuristic, win rate (mean return) @ env step saved")
    print("\n".join(mappo_rows(weights)))


if __name__ == "__main__":
    main()
