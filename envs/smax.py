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
`collect`'s docstring and docs/datasets.md.
"""

import contextlib
import hashlib
import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

PINNED_PACKAGES = ("jax", "jaxlib", "jaxmarl")  # SMAX's dynamics are the library's code: datasets record and check it
MAPS = {"smax-3m": "3m", "smax-8m": "8m", "smax-3s_vs_3z": "3s_vs_3z", "smax-3s_vs_4z": "3s_vs_4z"}
ENV_DEFAULTS = dict(max_steps=100, reward_scale=10.0)
QUALITIES = ("random", "medium", "replay", "expert")
RECIPE_DEFAULTS = dict(quality="expert", n_episodes=10_000, seed=0, uniform_prob=0.2, behavior_dir="", replay_dir="")
BEHAVIOR_DIR = Path(__file__).resolve().parent / "behavior" / "weights"
STOP = 4  # the stop action: always legal, the only one for a dead unit
CHUNK = 500  # dataset episodes run side by side in one jitted call


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


# ---- datasets ----
def _uniform_actions(key, avail):
    """A uniformly random legal action per agent: avail [..., A] bool -> [...] int32."""
    import jax
    import jax.numpy as jnp

    return jax.random.categorical(key, jnp.where(avail, 0.0, -jnp.inf)).astype(jnp.int32)


def _behavior_policy(quality: str, uniform_prob: float):
    """(params, key, obs [N, obs_dim], avail [N, A]) -> actions [N] of one dataset quality.

    random: uniform over the legal actions; expert: sampled from the final actor; medium:
    each agent, each step, acts uniformly with probability `uniform_prob`, else samples
    the mid-training actor."""
    import jax
    import jax.numpy as jnp

    def policy(params, key, obs, avail):
        k_uniform, k_actor, k_mix = jax.random.split(key, 3)
        uniform = _uniform_actions(k_uniform, avail)
        if quality == "random":
            return uniform
        from envs.behavior.mappo import sample_actions

        actor = sample_actions(params, k_actor, obs, avail)
        if quality == "expert":
            return actor
        return jnp.where(jax.random.uniform(k_mix, uniform.shape) < uniform_prob, uniform, actor)

    return policy


_EPISODE_FNS = {}


def _episode_fn(env: Smax, quality: str, uniform_prob: float):
    """jit(vmap) of one whole episode per key, recording agent `agent_id`'s view of each step.

    Steps after the end are flagged `valid=False` (the state is frozen there)."""
    import jax
    import jax.numpy as jnp

    cache_key = (env.env_id, env.max_steps, env.reward_scale, quality, uniform_prob)
    if cache_key in _EPISODE_FNS:
        return _EPISODE_FNS[cache_key]
    policy = _behavior_policy(quality, uniform_prob)

    def episode(params, key, agent_id):
        key, reset_key = jax.random.split(key)
        obs, avail, world_state, state = env.jax_reset(reset_key)

        def step(carry, _):
            obs, avail, world_state, state, over, key = carry
            key, act_key, step_key = jax.random.split(key, 3)
            actions = policy(params, act_key, obs, avail)
            n_obs, n_avail, n_world_state, n_state, reward, terminated, timeout, won = env._frozen_step(
                step_key, state, actions, obs, avail, world_state, over)
            record = dict(
                obs=obs[agent_id], actions=actions[agent_id], avail_actions=avail[agent_id], rewards=reward,
                next_obs=n_obs[agent_id], next_avail_actions=n_avail[agent_id], states=world_state,
                dones=terminated, timeouts=timeout, won=won, valid=~over,
            )
            return (n_obs, n_avail, n_world_state, n_state, over | terminated | timeout, key), record

        _, record = jax.lax.scan(step, (obs, avail, world_state, state, jnp.bool_(False), key), None, length=env.max_steps)
        return record

    fn = jax.jit(jax.vmap(episode, in_axes=(None, 0, None)))
    _EPISODE_FNS[cache_key] = fn
    return fn


DTYPES = dict(obs=np.float32, actions=np.int64, avail_actions=np.bool_, rewards=np.float32, next_obs=np.float32,
              next_avail_actions=np.bool_, states=np.float32, dones=np.bool_, timeouts=np.bool_, won=np.bool_)


def policy_episodes(env: Smax, agent_id: int, quality: str, params, n_episodes: int, seed: int,
                    uniform_prob: float = 0.2, progress=None) -> dict:
    """`n_episodes` whole episodes of a behaviour policy, agent `agent_id`'s transitions, episode after episode."""
    import jax

    fn = _episode_fn(env, quality, uniform_prob)
    key = jax.random.key(np.random.SeedSequence([seed, agent_id]).generate_state(1)[0])
    parts = []
    for start in range(0, n_episodes, CHUNK):
        key, chunk_key = jax.random.split(key)
        count = min(CHUNK, n_episodes - start)
        record = jax.device_get(fn(params, jax.random.split(chunk_key, count), agent_id))
        valid = record.pop("valid")  # [episodes, steps], episode-major: whole episodes stay contiguous
        parts.append({k: np.asarray(v)[valid].astype(DTYPES[k]) for k, v in record.items()})
        if progress is not None:
            progress.update(int(valid.sum()))
    return {k: np.concatenate([p[k] for p in parts]) for k in DTYPES}


def load_behavior(env: Smax, level: str, behavior_dir: str = ""):
    """The `medium` or `expert` actor of the MAPPO behaviour learner for this map."""
    import envs

    path = Path(behavior_dir or BEHAVIOR_DIR) / env.env_id / f"{level}.npz"
    fix = f"train it with `python -m envs.behavior.mappo --env-id {env.env_id}` (see docs/datasets.md)"
    if not path.exists():
        raise envs.InputError(f"no {level} behaviour policy for {env.env_id} at {path}; {fix}")
    from envs.behavior.mappo import load_actor

    try:
        params, meta = load_actor(path)
    except Exception as e:  # a damaged or foreign file
        raise envs.InputError(f"cannot read {path} ({type(e).__name__}: {e}); {fix}") from None
    want = dict(env_id=env.env_id, obs_dim=env.obs_dim, n_agents=env.n_agents, n_actions=env.n_actions)
    if any(meta.get(k) != v for k, v in want.items()):
        raise envs.InputError(f"{path} holds an actor for {meta.get('env_id')} {[meta.get(k) for k in want]}, not {list(want.values())}; {fix}")
    return params


RECORDED = dict(avail_actions="avail", next_avail_actions="next_avail")  # dataset key -> the learner's key


def replay_folder(env_id: str, recipe_dir: str = "") -> Path:
    return Path(recipe_dir or f"runs/{env_id}__mappo__1/replay")


def replay_episodes(env: Smax, agent_id: int, n_episodes: int, folder: Path, progress=None) -> dict:
    """`n_episodes` of the learner's own training episodes for agent `agent_id`, evenly spread over training.

    The learner recorded, per env stream, one agent's view of every training step
    (`envs/behavior/mappo.py`); stream j belongs to agent `agent_of_stream[j]`. Only whole
    episodes are used (from a `first` step to a done or timeout): a resume cuts a stream."""
    import envs

    fix = f"train the learner with `python -m envs.behavior.mappo --env-id {env.env_id}` (it records its transitions there)"
    chunks = sorted(folder.glob("chunk_*.npz"))
    if not (folder / "streams.json").exists() or not chunks:
        raise envs.InputError(f"no recorded training transitions in {folder}; {fix}")
    streams = [j for j, a in enumerate(json.loads((folder / "streams.json").read_text())["agent_of_stream"]) if a == agent_id]

    def episodes(keys):
        """Yield the whole episodes of this agent's streams, in training order, as {key: [steps, ...]}."""
        pending = {j: None for j in streams}  # the unfinished episode of each stream
        for chunk in chunks:
            with np.load(chunk) as npz:  # [T, streams, ...]; the learner calls the masks `avail`, `next_avail`
                data = {k: npz[RECORDED.get(k, k)][:, streams] for k in set(keys) | {"first", "dones", "timeouts"}}
            for s, j in enumerate(streams):
                t0 = 0
                for t in range(len(data["first"])):
                    if data["first"][t, s]:
                        pending[j], t0 = [], t
                    if data["dones"][t, s] or data["timeouts"][t, s]:
                        if pending[j] is not None:
                            pending[j].append({k: data[k][t0 : t + 1, s] for k in keys})
                            yield {k: np.concatenate([p[k] for p in pending[j]]) for k in keys}
                        pending[j], t0 = None, t + 1
                if pending[j] is not None:
                    pending[j].append({k: data[k][t0:, s] for k in keys})

    available = sum(1 for _ in episodes(()))
    if available < n_episodes:
        raise envs.InputError(f"{folder} holds {available} whole training episodes of agent {agent_id}, fewer than the "
                              f"{n_episodes} asked; lower --n-episodes or record more (--record-envs) when training")
    chosen = set(np.linspace(0, available - 1, n_episodes).round().astype(int))
    parts = []
    for index, episode in enumerate(episodes(tuple(DTYPES))):
        if index in chosen:
            parts.append({k: episode[k].astype(DTYPES[k]) for k in DTYPES})
            if progress is not None:
                progress.update(len(episode["rewards"]))
    return {k: np.concatenate([p[k] for p in parts]) for k in DTYPES}


def collect(env: Smax, agent_id: int, quality: str, n_episodes: int, seed: int, uniform_prob: float,
            behavior_dir: str, replay_dir: str, progress=None) -> dict:
    """Agent `agent_id`'s dataset of one quality, `n_episodes` whole episodes from its own episodes.

    - random: every agent uniform over its legal actions;
    - medium: the learner's mid-training actor, each action uniform with probability `uniform_prob`;
    - replay: the learner's own training transitions, episodes evenly spread over training;
    - expert: the learner's final actor.
    Policies sample their actions; stream [seed, agent_id]."""
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; pick one of {', '.join(QUALITIES)}")
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if not 0.0 <= uniform_prob <= 1.0:
        raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
    if quality == "replay":
        return replay_episodes(env, agent_id, n_episodes, replay_folder(env.env_id, replay_dir), progress)
    params = None if quality == "random" else load_behavior(env, quality, behavior_dir)
    return policy_episodes(env, agent_id, quality, params, n_episodes, seed, uniform_prob, progress)


def dataset_summary(data: dict) -> dict:
    """What users judge a dataset by: episodes, transitions, win rate, return mean and std."""
    ends = np.flatnonzero(data["dones"] | data["timeouts"])
    returns = np.add.reduceat(data["rewards"].astype(np.float64), np.r_[0, ends[:-1] + 1]) if len(ends) else np.zeros(0)
    return dict(episodes=int(len(ends)), transitions=int(len(data["rewards"])), win_rate=float(data["won"][ends].mean()),
                return_mean=float(returns.mean()), return_std=float(returns.std()))


class Task:
    """One env id behind the interface envs.REGISTRY expects of an env module."""

    ENV_DEFAULTS = ENV_DEFAULTS
    RECIPE_DEFAULTS = RECIPE_DEFAULTS
    PINNED_PACKAGES = PINNED_PACKAGES
    collect = staticmethod(collect)
    dataset_summary = staticmethod(dataset_summary)

    def __init__(self, env_id: str):
        self.env_id = env_id

    def make(self, **env_kwargs) -> Smax:
        return make(self.env_id, **env_kwargs)

    def fingerprint(self, recipe: dict) -> str | None:
        """Hash of what a dataset is built from besides its options: the actor file, or the recorded replay."""
        digest = hashlib.sha1()
        if recipe["quality"] in ("medium", "expert"):
            path = Path(recipe["behavior_dir"] or BEHAVIOR_DIR) / self.env_id / f"{recipe['quality']}.npz"
            if not path.exists():
                return None
            digest.update(path.read_bytes())
        elif recipe["quality"] == "replay":
            folder = replay_folder(self.env_id, recipe["replay_dir"])
            files = sorted(folder.glob("chunk_*.npz"))
            if not files:
                return None
            for f in files:
                digest.update(f"{f.name}:{f.stat().st_size};".encode())
        else:
            return None
        return digest.hexdigest()[:16]


smax_3m = Task("smax-3m")
smax_8m = Task("smax-8m")
smax_3s_vs_3z = Task("smax-3s_vs_3z")
smax_3s_vs_4z = Task("smax-3s_vs_4z")
