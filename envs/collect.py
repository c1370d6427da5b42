"""Build per-agent offline datasets explicitly.

    python -m envs.collect --env-id dg --obs full
    python -m envs.collect --env-id dg --obs partial --n-transitions 100000
    python -m envs.collect --env-id matrix-game --payoff "1,5;6,1" --behavior "0.8,0.2;0.4,0.6"
    python -m envs.collect --env-id hopper-3x1      # needs the behaviour actors, see docs/datasets.md
    python -m envs.collect --env-id smax-3m --quality random   # medium/expert/replay need the MAPPO learner's output

Options left unset take the env's defaults (see `envs/<env>.py`). The algorithm
scripts build the default recipe themselves when it is missing; this command is for
building ahead of time or with other recipe options. The folder name is printed.

Every option is checked before anything is written. A dataset that exists is checked
whole (metadata, every agent file's SHA-256 and arrays): a whole one is kept, a damaged
or stale one is refused with the command that rebuilds it (`--force` replaces it).
"""

import json
from dataclasses import dataclass, fields

import tyro

import envs
from envs import dataset


@dataclass
class Args:
    env_id: str = "dg"
    """environment id (`envs.REGISTRY`)"""
    dataset_dir: str = dataset.default_dataset_dir()
    """root folder of datasets (env var ODMARL_DATASET_DIR sets the default)"""
    force: bool = False
    """rebuild even if the dataset exists"""
    # env options (None = env default)
    obs: str | None = None
    """dg: `full` (both positions) or `partial` (own position)"""
    eval_episode_len: int | None = None
    """dg: steps of an evaluation episode"""
    start_low: float | None = None
    """dg: lower bound of the uniform start positions"""
    start_high: float | None = None
    """dg: upper bound of the uniform start positions"""
    payoff: str | None = None
    """matrix-game: payoff matrix, rows = agent 0's actions, e.g. `1,5;6,1`"""
    behavior: str | None = None
    """matrix-game: one behaviour policy per agent (a row of action probabilities), e.g. `0.8,0.2;0.4,0.6`"""
    partition: str | None = None
    """minari:<dataset id>: the multi-agent MuJoCo partition of the robot's joints, e.g. `2x3` (envs/minari_split.py)"""
    max_steps: int | None = None
    """smax: steps before an episode times out"""
    reward_scale: float | None = None
    """smax: factor on SMAX's team reward (10: a full win returns 20, SMAC's scale)"""
    # recipe options (None = env default)
    n_transitions: int | None = None
    """transitions per agent"""
    n_episodes: int | None = None
    """matrix-game: plays of the game per agent (two transitions each); smax: episodes per agent"""
    quality: str | None = None
    """smax: random, medium, replay or expert (docs/datasets.md)"""
    uniform_prob: float | None = None
    """smax medium: probability that an agent acts uniformly at random instead of with the mid-training actor"""
    replay_dir: str | None = None
    """smax replay: the learner's recorded transitions (default: runs/<env-id>__mappo__1/replay)"""
    episode_len: int | None = None
    """dg, cn: steps of a dataset episode (ends on a time limit, not a terminal)"""
    seed: int | None = None
    """seed of the collection (agent i draws from the stream [seed, i])"""
    noise_std: float | None = None
    """multi-agent MuJoCo: std of the Gaussian noise on the behaviour actions (Appendix B's "small noise")"""
    behavior_dir: str | None = None
    """folder holding the behaviour policies, <env-id>/{early,intermediate,expert}.pt or {medium,expert}.npz (default: envs/behavior/weights)"""
    actor_dtype: str | None = None
    """multi-agent MuJoCo: the behaviour actors' arithmetic, float64 (default: the same bytes on any x86 CPU) or float32 (datasets before 2026-12-02)"""


def main(args: Args) -> None:
    module = envs.env_module(args.env_id)
    given = {f.name: getattr(args, f.name) for f in fields(args)}
    env_kwargs = {k: v for k, v in given.items() if k in module.ENV_DEFAULTS}
    recipe = {k: v for k, v in given.items() if k in module.RECIPE_DEFAULTS}
    stray = [k for k, v in given.items() if v is not None and k not in {"env_id", "dataset_dir", "force"} and k not in env_kwargs and k not in recipe]
    if stray:
        raise envs.InputError(f"{args.env_id} does not take --{', --'.join(s.replace('_', '-') for s in stray)}")
    env_kwargs, recipe = envs.resolve(args.env_id, env_kwargs, recipe)
    path = dataset.dataset_path(args.dataset_dir, args.env_id, env_kwargs, recipe)
    if (path / "meta.json").exists() and not args.force:
        try:
            dataset.verify(args.env_id, env_kwargs, recipe, args.dataset_dir)
        except envs.InputError as e:
            raise envs.InputError(f"the dataset exists but is damaged or stale: {str(e.code).removeprefix('error: ')}") from None
        print("the dataset exists and is whole (use --force to rebuild)")
        print(path)
        return
    path = dataset.build(args.env_id, env_kwargs, recipe, args.dataset_dir, replace=args.force)
    meta = json.loads((path / "meta.json").read_text())
    for agent_id, summary in enumerate(meta.get("summary") or []):
        print(f"agent {agent_id}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    print(f"built in {meta['build_seconds']:.0f} s")
    print(path)  # the last line: the folder, for scripts


if __name__ == "__main__":
    main(tyro.cli(Args))
