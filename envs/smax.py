"""SMAC micromanagement on jaxmarl's SMAX: `smax-3m`, `smax-8m`, `smax-3s_vs_3z`, `smax-3s_vs_4z`.

The StarCraft II binary cannot be installed here; SMAX (Rutherford et al., JaxMARL) is
the maintained re-implementation in JAX. Our agents are SMAX's allies; the enemies play
SMAX's built-in heuristic (`HeuristicEnemySMAX`, attack the closest unit). SMAX lacks
the paper's two 3s maps, so they are registered here (stalkers vs zealots).

What an agent sees and gets:
- its own unit-list observation (SMAX's `obs[ally_i]`), never the others';
- an available-action mask: 4 moves, stop, then one "attack enemy j" per enemy in range.
  A dead agent's only legal action is stop (4);
- the shared team reward: SMAX's reward (mean fraction of enemy health removed per step,
  plus 1.0 for a win) times `reward_scale` = 10, so a full win returns exactly 20, SMAC's
  scale (SMAC normalises its damage + kill + win reward to a maximum of 20);
- `done` = a true end (all enemies or all allies dead); reaching `max_steps` is a
  `timeout`. `won` = every enemy dead while an ally lives.
- `states` (analysis only): SMAX's world state, every unit's health, position, cooldown
  and type.

Three views of the same env:
- `jax_reset` / `jax_step`: pure single-episode functions for JAX code (vmap / scan them),
  used by the behaviour learner (`envs/behavior/mappo.py`) and the dataset collection;
- `reset(n_envs, rng)` / `step(actions)` / `avail_actions()`: the numpy batch interface
  every env here has, for the PyTorch algorithm scripts; an episode that has ended
  stays frozen (reward 0) until the next reset, because SMAX's `step_env` would keep
  simulating it;
- `evaluate_team(env, policy, n_episodes, seed)`: win rate and mean return of N per-agent
  policies over episodes run side by side.

Datasets (`python -m envs.collect --env-id smax-3m --quality expert`): 1e4 episodes per
agent, each agent from its own episodes (stream [seed, agent_id]); qualities in
`collect`'s docstring in envs/recipes/smax.py and docs/datasets.md.

This module is an adapter (envs/__init__.py): it imports no learner and no recipe. The
dataset recipes (loading the MAPPO actors and replay, running them) are envs/recipes/smax.py,
which the registry points at; the learner is envs/behavior/mappo.py.
"""

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

PINNED_PACKAGES = ("jax", "jaxlib", "jaxmarl")  # SMAX's dynamics are the library's code: datasets record and check it
MAPS = {"smax-3m": "3m", "smax-8m": "8m", "smax-3s_vs_3z": "3s_vs_3z", "smax-3s_vs_4z": "3s_vs_4z"}
ENV_DEFAULTS = dict(max_steps=100, reward_scale=10.0)
QUALITIES = ("random", "medium", "replay", "expert")
RECIPE_DEFAULTS = dict(  # how the datasets are made: envs/recipes/smax.py
    quality="expert", n_episodes=10_000, seed=0, uniform_prob=0.2, behavior_dir="", replay_dir="")
BEHAVIOR_DIR = Path(__file__).resolve().parent / "behavior" / "weights"
STOP = 4  # the stop action: always legal, the only one for a dead unit


@contextlib.contextmanager
def _quiet():
    """jaxmarl prints about its optional submodules on import (and swaps `sys.stdout` while
    importing, so `redirect_stdout` misses it): silence file descriptor 1 meanwhile."""
    stdout = sys.stdout
    stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        sys.stdout = stdout


def jaxmarl_smax():
    """jaxmarl's SMAX module, with the paper's two 3s maps registered (unit types: 2 stalker, 3 zealot)."""
    with _quiet():
        import jax.numpy as jnp
        from jaxmarl.environments import smax
    for name, enemies in (("3s_vs_3z", 3), ("3s_vs_4z", 4)):
        if name not in smax.smax_env.MAP_NAME_TO_SCENARIO:
            unit_types = jnp.array([2] * 3 + [3] * enemies, dtype=jnp.uint8)
            smax.smax_env.register_scenario(name, smax.smax_env.Scenario(unit_types, 3, enemies, False, False))
    return smax


class Smax:
    discrete = True

    def __init__(self, env_id: str, max_steps: int = 100, reward_scale: float = 10.0):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
        import jax

        smax = jaxmarl_smax()
        self.env_id, self.map_name = env_id, MAPS[env_id]
        self.max_steps, self.reward_scale = max_steps, float(reward_scale)
        self.jax_env = smax.HeuristicEnemySMAX(
            scenario=smax.map_name_to_scenario(self.map_name), max_steps=max_steps,
            see_enemy_actions=True, walls_cause_death=True, attack_mode="closest",
        )
        self.n_agents = self.jax_env.num_allies
        self.n_enemies = self.jax_env.num_enemies
        self.n_actions = self.jax_env.num_ally_actions
        self.obs_dim = self.jax_env.obs_size
        self.obs_dims = [self.obs_dim] * self.n_agents
        self.act_dims = [self.n_actions] * self.n_agents
        self.state_dim = self.jax_env.state_size
        self.eval_episode_len = max_steps
        self._v_reset = jax.jit(jax.vmap(self.jax_reset))
        self._v_step = jax.jit(jax.vmap(self._frozen_step))
        self._batch = None

    # ---- pure single-episode functions (jit / vmap / scan them) ----
    def _view(self, state, obs_dict):
        import jax.numpy as jnp

        agents = self.jax_env.agents
        obs = jnp.stack([obs_dict[a] for a in agents]).astype(jnp.float32)
        avail_dict = self.jax_env.get_avail_actions(state)
        avail = jnp.stack([avail_dict[a] for a in agents]).astype(bool)
        return obs, avail, obs_dict["world_state"].astype(jnp.float32)

    def jax_reset(self, key):
        """key -> (obs [N, obs_dim] f32, avail [N, A] bool, world_state [state_dim] f32, state)."""
        obs_dict, state = self.jax_env.reset(key)
        return (*self._view(state, obs_dict), state)

    def jax_step(self, key, state, actions):
        """(key, state, actions [N] int) -> (obs, avail, world_state, state, reward, terminated, timeout, won).

        `reward` is the shared team reward times `reward_scale`; `terminated` a true end (a
        team wiped out), `timeout` the `max_steps` limit without one. After either, reset."""
        import jax.numpy as jnp

        actions = {a: actions[i] for i, a in enumerate(self.jax_env.agents)}
        obs_dict, state, rewards, _, _ = self.jax_env.step_env(key, state, actions)
        alive = state.state.unit_alive
        allies_dead, enemies_dead = ~alive[: self.n_agents].any(), ~alive[self.n_agents :].any()
        terminated = allies_dead | enemies_dead
        timeout = (state.state.step >= self.max_steps) & ~terminated  # SMAX's own `done` comes one step later
        won = enemies_dead & ~allies_dead
        reward = (rewards[self.jax_env.agents[0]] * self.reward_scale).astype(jnp.float32)
        return (*self._view(state, obs_dict), state, reward, terminated, timeout, won)

    def _frozen_step(self, key, state, actions, obs, avail, world_state, over):
        """`jax_step` for an episode that may have ended already (`over`): then nothing moves."""
        import jax
        import jax.numpy as jnp

        out = self.jax_step(key, state, actions)
        kept = (obs, avail, world_state, state, jnp.float32(0.0), jnp.bool_(False), jnp.bool_(False), jnp.bool_(False))
        return jax.tree.map(lambda old, new: jnp.where(over, old, new), kept, out)

    # ---- the numpy batch interface of every env here ----
    def reset(self, n_envs: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        import jax

        rng = rng if rng is not None else np.random.default_rng()
        self._key = jax.random.key(int(rng.integers(2**31)))
        self._key, reset_key = jax.random.split(self._key)
        obs, avail, world_state, state = self._v_reset(jax.random.split(reset_key, n_envs))
        self._batch = dict(obs=obs, avail=avail, world_state=world_state, state=state)
        self.over = np.zeros(n_envs, dtype=bool)
        self.won = np.zeros(n_envs, dtype=bool)
        return self._agent_obs()

    def _agent_obs(self) -> list[np.ndarray]:
        obs = np.asarray(self._batch["obs"])
        return [obs[:, i] for i in range(self.n_agents)]

    @property
    def state(self) -> np.ndarray:
        return np.asarray(self._batch["world_state"])

    def avail_actions(self) -> list[np.ndarray]:
        avail = np.asarray(self._batch["avail"])
        return [avail[:, i] for i in range(self.n_agents)]

    def step(self, actions: list[np.ndarray]):
        """Per-agent actions [n_envs] -> (per-agent obs, team reward [n_envs], ended [n_envs]).

        `ended` is a true end or the time limit; `self.won` records wins. Illegal actions are
        refused: SMAX would silently turn them into no-ops."""
        import jax
        import jax.numpy as jnp

        if self._batch is None:
            raise RuntimeError("call reset() before step()")
        joint = np.stack([np.asarray(a) for a in actions], axis=1).astype(np.int32)  # [n_envs, N]
        avail = np.asarray(self._batch["avail"])
        legal = np.take_along_axis(avail, joint[..., None].clip(0, self.n_actions - 1), -1)[..., 0] & (joint >= 0) & (joint < self.n_actions)
        if not legal[~self.over].all():
            env, agent = np.argwhere(~legal & ~self.over[:, None])[0]
            raise ValueError(f"agent {agent} took action {joint[env, agent]}, not available in episode {env}; mask the policy with avail_actions()")
        self._key, step_key = jax.random.split(self._key)
        b = self._batch
        obs, avail, world_state, state, reward, terminated, timeout, won = self._v_step(
            jax.random.split(step_key, len(joint)), b["state"], jnp.asarray(joint), b["obs"], b["avail"], b["world_state"], jnp.asarray(self.over)
        )
        self._batch = dict(obs=obs, avail=avail, world_state=world_state, state=state)
        ended = np.asarray(terminated) | np.asarray(timeout)
        self.won |= np.asarray(won)
        self.over |= ended
        return self._agent_obs(), np.asarray(reward), ended


def make(env_id: str, **kwargs) -> Smax:
    return Smax(env_id, **kwargs)


def evaluate_team(env: Smax, policy, n_episodes: int, seed: int) -> dict:
    """Run N per-agent policies for `n_episodes` episodes side by side against the heuristic enemy.

    `policy(obs, avail)` takes per-agent lists of [n_episodes, obs_dim] observations and
    [n_episodes, A] masks and returns per-agent actions [n_episodes] (legal ones)."""
    obs = env.reset(n_episodes, np.random.default_rng(seed))
    returns = np.zeros(n_episodes)
    lengths = np.zeros(n_episodes, dtype=int)
    for _ in range(env.max_steps):
        running = ~env.over
        obs, reward, _ = env.step(policy(obs, env.avail_actions()))
        returns += reward
        lengths += running
        if env.over.all():
            break
    return dict(win_rate=float(env.won.mean()), return_mean=float(returns.mean()), return_std=float(returns.std()),
                episode_len_mean=float(lengths.mean()), n_episodes=n_episodes)


def heuristic_policy(env: Smax, seed: int = 0):
    """SMAX's built-in heuristic (the enemies' policy) playing our side, as a `policy(obs, avail)` for
    `evaluate_team`: a reference point, not a behaviour policy. Illegal picks (a dead unit moving) become stop.
    The heuristic remembers its targets across calls: make a fresh one for each evaluation."""
    import jax
    import jax.numpy as jnp

    jsmax = jaxmarl_smax()
    act = jax.jit(jax.vmap(jax.vmap(jsmax.heuristic_enemy.create_heuristic_policy(env.jax_env._env, 0, shoot=True, attack_mode="closest"))))
    init = jsmax.heuristic_enemy.get_heuristic_policy_initial_state()
    memory = {"key": jax.random.key(seed), "state": None}

    def policy(obs, avail):
        obs = jnp.asarray(np.stack(obs, 1))  # [episodes, agents, obs_dim]
        if memory["state"] is None or jax.tree.leaves(memory["state"])[0].shape[:2] != obs.shape[:2]:
            memory["state"] = jax.tree.map(lambda x: jnp.broadcast_to(x, obs.shape[:2] + jnp.shape(x)), init)
        memory["key"], key = jax.random.split(memory["key"])
        actions, memory["state"] = act(jax.random.split(key, obs.shape[:2]), memory["state"], obs)
        actions = np.asarray(actions)
        legal = np.take_along_axis(np.stack(avail, 1), actions[..., None], -1)[..., 0]
        actions = np.where(legal, actions, STOP)
        return [actions[:, i] for i in range(actions.shape[1])]

    return policy
