"""Print the tables of docs/datasets.md from the datasets on disk (their meta.json), not from logs.

    python benchmark/datasets_table.py                       # every dataset under datasets/
    python benchmark/datasets_table.py --dataset-dir /data   # or ODMARL_DATASET_DIR

SMAX datasets: one row per map x quality (episodes, transitions, win rate, return mean +- std,
averaged over the agents' files; build time of the whole folder). Multi-agent MuJoCo: one row
per robot and agent with the mean episode return of each Appendix-B part (D4RL-normalised).
Minari datasets built by envs/minari_split.py (the local store's odmarl/*): one row each.
"""

import argparse
import sys
import json
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmark/...`
from envs import dataset, mamujoco, smax
from envs.recipes import mamujoco as mamujoco_recipe


def smax_rows(metas: list[dict]) -> list[str]:
    rows = ["| map | quality | episodes / agent | transitions / agent | win rate | return (mean ± std) | build time |",
            "|---|---|---|---|---|---|---|"]
    order = {q: i for i, q in enumerate(smax.QUALITIES)}
    metas = sorted(metas, key=lambda m: (list(smax.MAPS).index(m["env_id"]), order[m["recipe"]["quality"]]))
    for m in metas:
        s = m["summary"]
        mean = lambda k: float(np.mean([a[k] for a in s]))  # noqa: E731
        rows.append(f"| {smax.MAPS[m['env_id']]} | {m['recipe']['quality']} | {mean('episodes'):.0f} | {mean('transitions'):,.0f} "
                    f"| {mean('win_rate'):.4f} | {mean('return_mean'):.2f} ± {mean('return_std'):.2f} | {m['build_seconds'] / 60:.1f} min |")
    return rows


def mamujoco_rows(metas: list[dict]) -> list[str]:
    parts = [f"part{k}_{own}_{others}" for k, (_, own, others) in enumerate(mamujoco_recipe.MIXTURE)]
    rows = ["| env id | agent | episodes | return, whole file | early (20%) | own intermediate + others expert (35%) "
            "| own expert + others intermediate (35%) | all expert (10%) | build time (all agents) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m in sorted(metas, key=lambda m: m["env_id"]):
        score = lambda r: mamujoco.normalized_score(m["env_id"], r)  # noqa: E731
        for agent_id, a in enumerate(m["summary"]):
            cells = [f"{a[p + '_return_mean']:.0f} ({score(a[p + '_return_mean']):.1f})" for p in parts]
            rows.append(f"| {m['env_id']} | {agent_id} | {a['episodes']} | {a['return_mean']:.0f} ({score(a['return_mean']):.1f}) | "
                        + " | ".join(cells) + f" | {m['build_seconds'] / 60:.1f} min |")
    return rows


def minari_rows() -> list[str]:
    """The odmarl/* datasets of the local Minari store (envs/minari_split.py): episodes, steps, terminations, return."""
    try:
        import minari
    except ImportError:
        return []
    from envs import minari_split

    rows = ["| Minari id | episodes | steps | terminated episodes | return (mean ± std) | D4RL-normalised |", "|---|---|---|---|---|---|"]
    for dataset_id in sorted(d for d in minari.list_local_datasets() if d.startswith("odmarl/")):
        data = minari.load_dataset(dataset_id)
        returns, terminated = [], 0
        for episode in data.iterate_episodes():
            returns.append(float(np.sum(episode.rewards)))
            terminated += bool(episode.terminations[-1])
        env_id = minari_split.ROBOTS[minari_split.robot_of(dataset_id)]
        rows.append(f"| {dataset_id} | {len(returns)} | {data.total_steps:,} | {terminated} | {np.mean(returns):.0f} ± {np.std(returns):.0f} "
                    f"| {mamujoco.normalized_score(env_id, np.mean(returns)):.1f} |")
    return rows if len(rows) > 2 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default=dataset.default_dataset_dir())
    args = parser.parse_args()
    metas = []
    for path in sorted(Path(args.dataset_dir).glob("*/meta.json")):
        if dataset.TEMPORARY.search(path.parent.name):  # a build under way (or killed): not a dataset yet
            continue
        try:
            meta = json.loads(path.read_text())
            if not isinstance(meta, dict) or "env_id" not in meta:
                raise ValueError("not a dataset's metadata")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            print(f"skipped {path.parent}: unreadable meta.json ({e})", file=sys.stderr)
            continue
        if meta.get("format_version") not in (1, dataset.FORMAT_VERSION):  # format 1 is upgraded on its first load
            try:
                command = dataset.rebuild_command(meta["env_id"], meta["env_kwargs"], meta["recipe"], args.dataset_dir)
            except (SystemExit, Exception):  # an env id this code no longer knows
                command = f"python -m envs.collect --env-id {meta['env_id']} ... --force"
            print(f"note: {path.parent} has format {meta.get('format_version')}, the scripts read "
                  f"{dataset.FORMAT_VERSION}; rebuild it with `{command}`", file=sys.stderr)
        if isinstance(meta.get("summary"), list):  # envs with a dataset_summary (SMAX, multi-agent MuJoCo)
            metas.append(meta)
    smax_metas = [m for m in metas if m["env_id"] in smax.MAPS]
    mujoco_metas = [m for m in metas if m["env_id"] in mamujoco.TASKS]
    if smax_metas:
        print("\n".join(smax_rows(smax_metas)), end="\n\n")
    if mujoco_metas:
        print("(mean return per episode, D4RL-normalised in brackets)")
        print("\n".join(mamujoco_rows(mujoco_metas)))
    minari_table = minari_rows()
    if minari_table:
        print("\n(the local Minari store, odmarl/*)")
        print("\n".join(minari_table))
    if not smax_metas and not mujoco_metas and not minari_table:
        print(f"no dataset with a summary under {args.dataset_dir}")


if __name__ == "__main__":
    main()
