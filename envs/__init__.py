"""Environments of the paper, behind one small registry.

Each env module exposes `ENV_DEFAULTS` (keyword arguments of the environment),
`RECIPE_DEFAULTS` (how its offline datasets are collected), `make(**env_kwargs)` and
`collect(env, agent_id, **recipe, progress=None)`. An environment object has
`n_agents`, `obs_dims`, `act_dims`, `discrete`, `eval_episode_len`,
`reset(n_envs, rng)` and `step(actions)`, vectorised over a batch of episodes.

Layers, bottom up: adapters (envs/dg.py, matrix_game.py, mamujoco.py, smax.py, cn.py) import
no learner; the online learners (envs/behavior/) import adapters; dataset recipes
(envs/recipes/, envs/minari_split.py) import both. The registry names where each env id's
entry lives and imports it on first use, so `import envs` stays light.
"""

import importlib


class InputError(SystemExit):
    """Bad user input: exits with one line naming the problem and the fix (no traceback)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# env id -> "module:attribute" of its entry (a module, or an object with the same interface)
REGISTRY = {
    "dg": "envs.dg",
    "matrix-game": "envs.matrix_game",
    "cn": "envs.cn",
    "halfcheetah-2x3": "envs.recipes.mamujoco:halfcheetah_2x3",
    "walker2d-2x3": "envs.recipes.mamujoco:walker2d_2x3",
    "hopper-3x1": "envs.recipes.mamujoco:hopper_3x1",
    "ant-2x4": "envs.recipes.mamujoco:ant_2x4",
    "smax-3m": "envs.recipes.smax:smax_3m",
    "smax-8m": "envs.recipes.smax:smax_8m",
    "smax-3s_vs_3z": "envs.recipes.smax:smax_3s_vs_3z",
    "smax-3s_vs_4z": "envs.recipes.smax:smax_3s_vs_4z",
}
MINARI_PREFIX = "minari:"  # any Minari dataset, split per agent (envs/minari_split.py)


def env_module(env_id: str):
    if env_id.startswith(MINARI_PREFIX):
        from envs import minari_split

        return minari_split.Task(env_id)
    if env_id not in REGISTRY:
        raise InputError(f"unknown env id {env_id!r}; known ids: {', '.join(REGISTRY)}, {MINARI_PREFIX}<dataset id>")
    entry = REGISTRY[env_id]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = importlib.import_module(module)
        entry = getattr(entry, attribute) if attribute else entry
    return entry


# ranges of the options that several envs share, checked by name before anything is built or read
POSITIVE = ("n_transitions", "n_episodes", "episode_len", "eval_episode_len", "max_steps")
NON_NEGATIVE = ("seed", "noise_std")
UNIT = ("uniform_prob",)


def check_ranges(env_id: str, options: dict) -> None:
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name in POSITIVE + NON_NEGATIVE + UNIT and not numeric:
            raise InputError(f"{env_id}: {flag} must be a number, got {value!r}")
        if name in POSITIVE and not value > 0:
            raise InputError(f"{env_id}: {flag} must be > 0, got {value}")
        if name in NON_NEGATIVE and not value >= 0:
            raise InputError(f"{env_id}: {flag} must be >= 0, got {value}")
        if name in UNIT and not 0 <= value <= 1:
            raise InputError(f"{env_id}: {flag} must lie in [0, 1], got {value}")


def resolve(env_id: str, env_kwargs: dict | None = None, recipe: dict | None = None) -> tuple[dict, dict]:
    """Fill in defaults; refuse keys the env does not know and values out of range."""
    module = env_module(env_id)
    out = []
    for given, defaults, what in ((env_kwargs, module.ENV_DEFAULTS, "env"), (recipe, module.RECIPE_DEFAULTS, "dataset")):
        given = {k: v for k, v in (given or {}).items() if v is not None}
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise InputError(f"{env_id} has no {what} option {unknown}; it takes {sorted(defaults)}")
        out.append({**defaults, **given})
        check_ranges(env_id, out[-1])
    return out[0], out[1]


def make(env_id: str, **env_kwargs):
    env_kwargs, _ = resolve(env_id, env_kwargs)
    try:
        return env_module(env_id).make(**env_kwargs)
    except ValueError as e:
        raise InputError(str(e)) from None
