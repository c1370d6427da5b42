"""The four SMAX dataset qualities (random, medium, replay, expert): the MAPPO learner's actors and
recorded training transitions run on the adapter (envs/smax.py).

A dataset recipe sits above the adapter and the learner: it loads the learner's actors and
replay (envs/behavior/mappo.py) and runs them in the adapter's environment. The adapter
imports neither; the learner imports only the adapter. The `Task`s below are the registry's
entries (envs/__init__.py).
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from envs.behavior.mappo import PRESETS, load_actor, sample_actions
from envs.smax import BEHAVIOR_DIR, ENV_DEFAULTS, PINNED_PACKAGES, QUALITIES, RECIPE_DEFAULTS, Smax, make

CHUNK = 500  # dataset episodes run side by side in one jitted call


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

    try:
        params, meta = load_actor(path)
    except Exception as e:  # a damaged or foreign file
        raise envs.InputError(f"cannot read {path} ({type(e).__name__}: {e}); {fix}") from None
    want = dict(env_id=env.env_id, obs_dim=env.obs_dim, n_agents=env.n_agents, n_actions=env.n_actions)
    if any(meta.get(k) != v for k, v in want.items()):
        raise envs.InputError(f"{path} holds an actor for {meta.get('env_id')} {[meta.get(k) for k in want]}, not {list(want.values())}; {fix}")
    return params


RECORDED = dict(avail_actions="avail", next_avail_actions="next_avail")  # dataset key -> the learner's key


def learner_outcome(folder: Path) -> tuple[float, float] | None:
    """(best evaluated win rate, target win rate) of the learner that recorded `folder`, from the copy of its
    returns.json it keeps there; None for a replay recorded without one."""
    path = folder / "returns.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return float((record.get("expert") or {}).get("win_rate", 0.0)), float(record["target_win_rate"])


def learner_seeds(env_id: str) -> dict[int, Path]:
    """seed -> replay folder of the learner runs in runs/ (`runs/<env-id>__mappo__<seed>/replay`)."""
    found = {}
    for folder in Path("runs").glob(f"{env_id}__mappo__*/replay"):
        seed = folder.parent.name.rsplit("__", 1)[1]
        if seed.isdigit():
            found[int(seed)] = folder
    return dict(sorted(found.items()))


def replay_folder(env_id: str, recipe_dir: str = "") -> Path:
    """The recorded replay a dataset reads: `recipe_dir`, or by default that of the first learner run in runs/ (seed
    1, 2, ...) whose best actor reached its target win rate; seed 1's folder if none did (`replay_chunks` says why).
    The learner's runs are not bit-identical across machines (XLA), and one seed can fail where another learns."""
    if recipe_dir:
        return Path(recipe_dir)
    for folder in learner_seeds(env_id).values():
        outcome = learner_outcome(folder)
        if outcome is None or outcome[0] >= outcome[1]:
            return folder
    return Path(f"runs/{env_id}__mappo__1/replay")


def replay_chunks(env: Smax, folder: Path) -> list[Path]:
    """The learner's recorded chunks in `folder`, or a one-line refusal naming the command that records them."""
    import envs

    # the learner records into <run-dir>/replay
    run_dir = "" if folder == replay_folder(env.env_id) else f" --run-dir {folder.parent if folder.name == 'replay' else folder}"
    again = "run this again" if folder.name == "replay" else f"pass --replay-dir {folder / 'replay'}"
    fix = (f"record them by training the learner, `python -m envs.behavior.mappo --env-id {env.env_id}{run_dir} --weights-dir "
           f"runs/mappo-actors` (about {PRESETS[env.env_id]['minutes']} min on 2 CPU cores; --weights-dir keeps the "
           f"shipped actors, which the medium and expert datasets use), then {again}")
    chunks = sorted(folder.glob("chunk_*.npz"))
    if not (folder / "streams.json").exists() or not chunks:
        raise envs.InputError(f"no recorded training transitions in {folder}; {fix}")
    outcome = learner_outcome(folder)
    if outcome is not None and outcome[0] < outcome[1]:
        seed = max(learner_seeds(env.env_id), default=1) + 1
        then = ("the replay datasets then read the first seed that reached it" if not run_dir
                else f"then pass --replay-dir runs/{env.env_id}__mappo__{seed}/replay")
        command = f"python -m envs.behavior.mappo --env-id {env.env_id} --seed {seed} --weights-dir runs/mappo-actors-{seed}"
        raise envs.InputError(
            f"{folder} is the replay of a failed learner: its best actor won {outcome[0]:.2f} of its evaluation episodes, "
            f"below its target {outcome[1]:g} (if it was stopped, finish it with --resume); or train another seed, "
            f"`{command}` (about {PRESETS[env.env_id]['minutes']} min on 2 CPU cores); {then}")
    return chunks


def replay_episodes(env: Smax, agent_id: int, n_episodes: int, folder: Path, progress=None) -> dict:
    """`n_episodes` of the learner's own training episodes for agent `agent_id`, evenly spread over training.

    The learner recorded, per env stream, one agent's view of every training step
    (`envs/behavior/mappo.py`); stream j belongs to agent `agent_of_stream[j]`. Only whole
    episodes are used (from a `first` step to a done or timeout): a resume cuts a stream."""
    import envs

    chunks = replay_chunks(env, folder)
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

    def preflight(self, env: Smax, recipe: dict) -> None:
        """What the recipe reads exists and fits the map: checked before a dataset folder is made."""
        import envs

        if recipe["quality"] not in QUALITIES:
            raise envs.InputError(f"{self.env_id}: unknown --quality {recipe['quality']!r}; pick one of {', '.join(QUALITIES)}")
        if recipe["quality"] == "replay":
            replay_chunks(env, replay_folder(self.env_id, recipe["replay_dir"]))
        elif recipe["quality"] != "random":
            load_behavior(env, recipe["quality"], recipe["behavior_dir"])

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
