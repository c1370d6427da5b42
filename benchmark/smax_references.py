"""Reference teams on every SMAX map: SMAX's heuristic and uniform play on our side, and the shipped
MAPPO actors, all against the heuristic enemy, through `envs.smax.evaluate_team`.

    python benchmark/smax_references.py                     # 1000 episodes per team and map
    python benchmark/smax_references.py --episodes 200 --maps 3m 8m

Prints a markdown table: win rate and mean +- std return (a win returns 20).
"""

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmark/...`

import envs

from envs import smax
from envs.behavior.mappo import load_actor, sample_actions


def uniform_policy(seed: int):
    rng = np.random.default_rng(seed)

    def policy(obs, avail):
        return [np.array([rng.choice(np.flatnonzero(row)) for row in a]) for a in avail]

    return policy


def actor_policy(env, level: str, seed: int):
    """A shipped MAPPO actor, each agent sampling from its own observation (as the datasets do)."""
    params, _ = load_actor(smax.BEHAVIOR_DIR / env.env_id / f"{level}.npz")
    act = jax.jit(sample_actions)
    memory = {"key": jax.random.key(seed)}

    def policy(obs, avail):
        memory["key"], key = jax.random.split(memory["key"])
        actions = np.asarray(act(params, key, np.stack(obs, 1), np.stack(avail, 1)))
        return [actions[:, i] for i in range(actions.shape[1])]

    return policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--maps", nargs="+", default=[m.removeprefix("smax-") for m in smax.MAPS])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"| map | team (vs SMAX's heuristic) | win rate | return | ({args.episodes} episodes, seed {args.seed})")
    print("|---|---|---|---|")
    for name in args.maps:
        env = envs.make(f"smax-{name}")
        teams = {"uniform": uniform_policy(args.seed), "SMAX heuristic": smax.heuristic_policy(env, args.seed)}
        for level in ("medium", "expert"):
            if (smax.BEHAVIOR_DIR / env.env_id / f"{level}.npz").exists():
                teams[f"MAPPO {level}"] = actor_policy(env, level, args.seed)
        for team, policy in teams.items():
            r = smax.evaluate_team(env, policy, args.episodes, args.seed)
            print(f"| {name} | {team} | {r['win_rate']:.3f} | {r['return_mean']:.2f} ± {r['return_std']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
