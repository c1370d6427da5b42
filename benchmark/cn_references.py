"""Reference teams on cooperative navigation (`cn`): what a learned team's return can be read against.

    python benchmark/cn_references.py                  # 1000 evaluation episodes of 25 steps per team
    python benchmark/cn_references.py --episodes 100

Teams, every agent on its own observation (envs/cn.py: [v_i, p_i, l_j - p_i, p_k - p_i, comm]):
- uniform: a_i uniform on [-1, 1]^2, the behaviour policy of the cn datasets;
- stand still: a_i = 0, the mean action of the cn datasets (what behaviour cloning alone converges to);
- nearest landmark: each agent steers to the landmark nearest to it (agents may pile onto one);
- landmark i: agent i steers to landmark i, so the four landmarks are covered by construction.
Steering is a = clip(2 (l - p_i) - 0.5 v_i, -1, 1) (a hand-set PD rule, not tuned).
Prints a markdown table of the team return (undiscounted sum of the shared reward), mean +- std.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmark/...`

import envs  # noqa: E402


def steer(obs, target):
    """PD rule towards a relative target position, from the agent's own velocity (obs[:, 0:2])."""
    return np.clip(2 * target - 0.5 * obs[:, 0:2], -1, 1).astype(np.float32)


def uniform(i, obs, rng):
    return rng.uniform(-1, 1, (len(obs), 2)).astype(np.float32)


def stand_still(i, obs, rng):
    return np.zeros((len(obs), 2), np.float32)


def nearest_landmark(i, obs, rng):
    rel = obs[:, 4:12].reshape(-1, 4, 2)
    return steer(obs, rel[np.arange(len(obs)), np.linalg.norm(rel, axis=-1).argmin(1)])


def landmark_i(i, obs, rng):
    return steer(obs, obs[:, 4 + 2 * i:6 + 2 * i])


TEAMS = {"uniform": uniform, "stand still": stand_still, "nearest landmark": nearest_landmark, "landmark i": landmark_i}


def team_return(env, policy, episodes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    obs = env.reset(episodes, rng)
    total = np.zeros(episodes)
    for _ in range(env.eval_episode_len):
        obs, reward, _ = env.step([policy(i, obs[i], rng) for i in range(env.n_agents)])
        total += reward
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation episodes per team")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start states (and of the uniform team)")
    args = parser.parse_args()
    if args.episodes < 1:
        raise SystemExit(f"error: --episodes must be >= 1, got {args.episodes}")
    env = envs.make("cn")
    print(f"| team | team return over {args.episodes} episodes of {env.eval_episode_len} steps |\n|---|---|")
    for name, policy in TEAMS.items():
        total = team_return(env, policy, args.episodes, args.seed)
        print(f"| {name} | {total.mean():.1f} ± {total.std():.1f} |")


if __name__ == "__main__":
    main()
