"""Environments of the paper, behind one small registry.

Each registry entry (a module, or an object with the same attributes) exposes
`ENV_DEFAULTS` (keyword arguments of the environment), `RECIPE_DEFAULTS` (how its offline
datasets are collected), `make(**env_kwargs)` and `collect(env, agent_id, **recipe, progress=None)`;
optionally `PINNED_PACKAGES` (versions a dataset records and checks), `fingerprint(recipe)`
(a hash of what a recipe reads besides its options, e.g. behaviour weights),
`dataset_summary(data)` and `preflight(env, recipe)` (recipe checks that need the env, run
before a dataset folder is made). An environment object has `n_agents`, `obs_dims`,
`act_dims`, `discrete`, `eval_episode_len`, `state_dim`, `reset(n_envs, rng)`,
`step(actions)` and `observe(states)`, vectorised over a batch of episodes (discrete ones
also `avail_actions()`).

Layers, bottom up, without circles (tests/test_dataset_faults.py reads them off the source):
1. adapters -- envs/dg.py, matrix_game.py, mamujoco.py, smax.py, cn.py: environments, `make`,
   scores, evaluation and scripted policies; they import no learner and no recipe (dg and the
   matrix game collect with uniform or fixed policies, so their recipe lives in the adapter);
2. online learners -- envs/behavior/sac.py, mappo.py: import adapters only;
3. dataset recipes -- envs/recipes/mamujoco.py, smax.py, envs/minari_split.py: load the
   learners' actors (their small load/sample functions) and run them in the adapters; the
   registry points at them;
4. envs/dataset.py and envs/collect.py: write, check and read dataset folders through the registry.
The registry names where each env id's entry lives and imports it on first use, so
`import envs` stays light. Bad input anywhere raises `InputError`: one line, no traceback.
"""

import importlib
import math
import numbers


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
VAULT_PREFIX = "vault:"  # OG-MARL's (flashbax) vaults of multi-agent MuJoCo, split per agent (envs/vault.py)
DATA_PREFIX = "data:"  # a user's own per-agent data: a folder of agent_<i>.npz and meta.json (envs/userdata.py)


def env_module(env_id: str):
    if env_id.startswith(MINARI_PREFIX):
        from envs import minari_split

        return minari_split.Task(env_id)
    if env_id.startswith(VAULT_PREFIX):
        from envs import vault

        return vault.Task(env_id)
    if env_id.startswith(DATA_PREFIX):
        from envs import userdata

        return userdata.Task(env_id)
    if env_id not in REGISTRY:
        raise InputError(f"unknown env id {env_id!r}; known ids: {', '.join(REGISTRY)}, {MINARI_PREFIX}<dataset id>, "
                         f"{VAULT_PREFIX}<source>/<env>/<scenario>/<uid>, {DATA_PREFIX}<folder>")
    entry = REGISTRY[env_id]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = importlib.import_module(module)
        entry = getattr(entry, attribute) if attribute else entry
    return entry


# ranges of the options the envs share, checked by name before anything is built or read (env-specific checks
# live in each entry's `make`, `collect` and optional `preflight(env, recipe)`)
POSITIVE_INT = ("n_transitions", "n_episodes", "episode_len", "eval_episode_len", "max_steps")
NON_NEGATIVE_INT = ("seed",)
NON_NEGATIVE = ("noise_std",)
UNIT = ("uniform_prob",)
FINITE = ("start_low", "start_high", "reward_scale")
TEXT = ("obs", "quality", "payoff", "behavior", "behavior_dir", "replay_dir", "partition")
CHOICES = {"actor_dtype": ("float64", "float32")}


def check_ranges(env_id: str, options: dict) -> None:
    """One-line refusal of the first option of a known name whose value is of the wrong kind or out of range."""
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if name in POSITIVE_INT + NON_NEGATIVE_INT + NON_NEGATIVE + UNIT + FINITE:
            if not number:
                raise InputError(f"{env_id}: {flag} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InputError(f"{env_id}: {flag} must be a finite number, got {value}")
        if name in POSITIVE_INT and not value > 0:
            raise InputError(f"{env_id}: {flag} must be > 0, got {value}")
        if name in POSITIVE_INT and not integer:
            raise InputError(f"{env_id}: {flag} must be a positive integer, got {value!r}")
        if name in NON_NEGATIVE_INT and not (integer and value >= 0):
            raise InputError(f"{env_id}: {flag} must be an integer >= 0, got {value!r}")
        if name in NON_NEGATIVE and not value >= 0:
            raise InputError(f"{env_id}: {flag} must be >= 0, got {value}")
        if name in UNIT and not 0 <= value <= 1:
            raise InputError(f"{env_id}: {flag} must lie in [0, 1], got {value}")
        if name in TEXT and not isinstance(value, str):
            raise InputError(f"{env_id}: {flag} must be a string, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise InputError(f"{env_id}: {flag} must be one of {', '.join(CHOICES[name])}, got {value!r}")


class EnvSpec:
    """An env id resolved once: its registry entry (`module`), its env options and its dataset recipe, with the defaults
    filled in and every value checked. The dataset functions take it rather than resolving the id again."""

    def __init__(self, env_id: str, env_kwargs: dict | None = None, recipe: dict | None = None):
        self.env_id, self.module = env_id, env_module(env_id)
        out = []
        for given, defaults, what in ((env_kwargs, self.module.ENV_DEFAULTS, "env"), (recipe, self.module.RECIPE_DEFAULTS, "dataset")):
            given = {k: v for k, v in (given or {}).items() if v is not None}
            unknown = sorted(set(given) - set(defaults))
            if unknown:
                raise InputError(f"{env_id} has no {what} option {unknown}; it takes {sorted(defaults)}")
            out.append({**defaults, **given})
            check_ranges(env_id, out[-1])
        self.env_kwargs, self.recipe = out

    def make(self):
        try:
            return self.module.make(**self.env_kwargs)
        except ValueError as e:
            raise InputError(str(e)) from None


def resolve(env_id: str, env_kwargs: dict | None = None, recipe: dict | None = None) -> tuple[dict, dict]:
    """Fill in defaults; refuse keys the env does not know and values out of range."""
    spec = EnvSpec(env_id, env_kwargs, recipe)
    return spec.env_kwargs, spec.recipe


def make(env_id: str, **env_kwargs):
    return EnvSpec(env_id, env_kwargs).make()
