"""Environments of the paper, behind one small registry.

Each env module exposes `ENV_DEFAULTS` (keyword arguments of the environment),
`RECIPE_DEFAULTS` (how its offline datasets are collected), `make(**env_kwargs)` and
`collect(env, agent_id, **recipe, progress=None)`. An environment object has
`n_agents`, `obs_dims`, `act_dims`, `discrete`, `eval_episode_len`,
`reset(n_envs, rng)` and `step(actions)`, vectorised over a batch of episodes.
"""

from envs import dg, mamujoco, matrix_game, minari_split, smax


class InputError(SystemExit):
    """Bad user input: exits with one line naming the problem and the fix (no traceback)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


REGISTRY = {
    "dg": dg,
    "matrix-game": matrix_game,
    "halfcheetah-2x3": mamujoco.halfcheetah_2x3,
    "walker2d-2x3": mamujoco.walker2d_2x3,
    "hopper-3x1": mamujoco.hopper_3x1,
    "ant-2x4": mamujoco.ant_2x4,
    "smax-3m": smax.smax_3m,
    "smax-8m": smax.smax_8m,
    "smax-3s_vs_3z": smax.smax_3s_vs_3z,
    "smax-3s_vs_4z": smax.smax_3s_vs_4z,
}


def env_module(env_id: str):
    if env_id.startswith(minari_split.PREFIX):  # any Minari dataset, split per agent
        return minari_split.Task(env_id)
    if env_id not in REGISTRY:
        raise InputError(f"unknown env id {env_id!r}; known ids: {', '.join(REGISTRY)}, minari:<dataset id>")
    return REGISTRY[env_id]


def resolve(env_id: str, env_kwargs: dict | None = None, recipe: dict | None = None) -> tuple[dict, dict]:
    """Fill in defaults; refuse keys the env does not know."""
    module = env_module(env_id)
    out = []
    for given, defaults, what in ((env_kwargs, module.ENV_DEFAULTS, "env"), (recipe, module.RECIPE_DEFAULTS, "dataset")):
        given = {k: v for k, v in (given or {}).items() if v is not None}
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise InputError(f"{env_id} has no {what} option {unknown}; it takes {sorted(defaults)}")
        out.append({**defaults, **given})
    return out[0], out[1]


def make(env_id: str, **env_kwargs):
    env_kwargs, _ = resolve(env_id, env_kwargs)
    try:
        return env_module(env_id).make(**env_kwargs)
    except ValueError as e:
        raise InputError(str(e)) from None
