"""The Appendix-B datasets of multi-agent MuJoCo: SAC behaviour policies run on the adapter (envs/mamujoco.py).

A dataset recipe sits above the adapter and the learner: it loads the learner's actors
(envs/behavior/sac.py) and runs them in the adapter's environments. The adapter imports
neither; the learner imports only the adapter. `HalfCheetah` ... `Ant` below are the
registry's entries (envs/__init__.py): the env options, the recipe and its checks.
"""

import hashlib
from pathlib import Path

import numpy as np

import envs
from envs.behavior.sac import load_actor
from envs.mamujoco import BEHAVIOR_DIR, ENV_DEFAULTS, LEVELS, PINNED_PACKAGES, RECIPE_DEFAULTS, MultiAgentMuJoCo, make

# Appendix B: (share of B_i, policy agent i plays, policy the other agents play)
MIXTURE = (
    (0.20, "early", "early"),  # early-training experience: every agent samples the early SAC policy
    (0.35, "intermediate", "expert"),
    (0.35, "expert", "intermediate"),
    (0.10, "expert", "expert"),
)
PARALLEL_EPISODES = 64  # dataset episodes run side by side: one batched policy call serves them all


def load_behavior(env: MultiAgentMuJoCo, behavior_dir: str = "") -> dict:
    """The early, intermediate and expert SAC actors of the robot, {level: Actor}."""
    folder = Path(behavior_dir or BEHAVIOR_DIR) / env.env_id
    missing = [level for level in LEVELS if not (folder / f"{level}.pt").exists()]
    if missing:
        raise envs.InputError(
            f"no {'/'.join(missing)} behaviour policies for {env.env_id} in {folder}; "
            f"train them with `python -m envs.behavior.sac --env-id {env.env_id}` (see docs/datasets.md)"
        )
    actors = {}
    for level in LEVELS:
        path = folder / f"{level}.pt"
        try:
            actor, meta = load_actor(path)
        except Exception as e:  # torch raises many kinds on a damaged or foreign file
            raise envs.InputError(f"cannot read {path} ({type(e).__name__}: {e}); retrain it with `python -m envs.behavior.sac --env-id {env.env_id}`") from None
        if meta.get("env_id") != env.env_id or (meta["obs_dim"], meta["act_dim"]) != (env.state_dim, env.joint_act_dim):
            raise envs.InputError(
                f"{path} holds a {meta.get('env_id')} actor ({meta['obs_dim']} -> {meta['act_dim']}), not one for "
                f"{env.env_id} ({env.state_dim} -> {env.joint_act_dim}); retrain it with `python -m envs.behavior.sac --env-id {env.env_id}`"
            )
        actors[level] = actor
    return actors


def behavior_policy(env, actors, agent_id, own_level, others_level, noise_std, rng):
    """The joint policy of one mixture part: states [n, state_dim] -> joint actions [n, joint_act_dim] (float32).

    The early part samples the SAC policy (tanh of a Gaussian); the others act with the
    actors' deterministic actions (tanh of the mean) plus N(0, noise_std^2) noise, clipped.
    The actors compute in their own dtype (`actor_dtype` of the recipe: float64 by default, see `collect`)."""
    import torch

    levels = [own_level if j == agent_id else others_level for j in range(env.n_agents)]
    dtype = next(iter(actors.values())).fc1.weight.dtype

    @torch.no_grad()
    def policy(states: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(states, dtype=dtype)
        if own_level == "early":
            noise = torch.as_tensor(rng.standard_normal((len(states), env.joint_act_dim)), dtype=dtype)
            return actors["early"].act(obs, noise).numpy().astype(np.float32)
        means = {level: env.split(actors[level].act(obs).numpy()) for level in set(levels)}
        joint = env.merge([means[level][j] for j, level in enumerate(levels)])
        return np.clip(joint + noise_std * rng.standard_normal(joint.shape), -1.0, 1.0).astype(np.float32)

    return policy


def rollout(env: MultiAgentMuJoCo, policy, count: int, episode_len: int, rng, progress=None) -> dict:
    """Exactly `count` transitions of whole episodes of `policy`, episode after episode.

    Up to PARALLEL_EPISODES episodes run side by side. Each episode, when it starts, is
    promised up to `episode_len` of the transitions still unpromised, and ends on a true
    termination (`dones`), on that limit, or when the promise runs out (both `timeouts`);
    what a terminated episode leaves unused goes to the next one. So no step is thrown
    away and only the last episodes may end early on a timeout."""
    n_slots = min(PARALLEL_EPISODES, count)
    dims = dict(states=env.state_dim, actions=env.joint_act_dim, rewards=None, next_states=env.state_dim)
    shape = lambda n, d: (n,) if d is None else (n, d)  # noqa: E731
    out = {k: np.empty(shape(count, d), dtype=np.float32) for k, d in dims.items()}
    out["dones"] = np.zeros(count, dtype=bool)
    out["timeouts"] = np.zeros(count, dtype=bool)
    episode = {k: np.empty((n_slots, *shape(episode_len, d)), dtype=np.float32) for k, d in dims.items()}
    length = np.zeros(n_slots, dtype=int)  # steps taken by each slot's episode
    limit = np.zeros(n_slots, dtype=int)  # steps promised to it
    unpromised, written = count, 0

    env.reset(n_slots, rng)
    for k in range(n_slots):
        limit[k] = min(episode_len, unpromised)
        unpromised -= limit[k]
    running = limit > 0
    while running.any():
        env.terminated[:] = ~running  # idle slots are not stepped
        states = env.state.astype(np.float32)
        joint = policy(states)
        next_states, reward, terminated = env.step_joint(joint)
        slots, t = np.flatnonzero(running), length[running]
        for key, value in (("states", states), ("actions", joint), ("rewards", reward), ("next_states", next_states)):
            episode[key][slots, t] = value[slots]
        length[slots] += 1
        ended = running & (terminated | (length == limit))
        for k in np.flatnonzero(ended):  # copy the finished episode out, contiguous
            n = length[k]
            for key in dims:
                out[key][written : written + n] = episode[key][k, :n]
            out["dones"][written + n - 1] = terminated[k]
            out["timeouts"][written + n - 1] = not terminated[k]
            written += n
            unpromised += limit[k] - n
            running[k] = False
        if progress is not None:
            progress.update(len(slots))
        for k in np.flatnonzero(~running):  # start new episodes while transitions remain unpromised
            if unpromised > 0:
                limit[k], length[k] = min(episode_len, unpromised), 0
                unpromised -= limit[k]
                env.reset_episodes([k], rng)
                running[k] = True
    assert written == count
    return out


def collect(env: MultiAgentMuJoCo, agent_id: int, n_transitions: int, seed: int, noise_std: float,
            episode_len: int, behavior_dir: str, actor_dtype: str = RECIPE_DEFAULTS["actor_dtype"], progress=None) -> dict:
    """Agent `agent_id`'s dataset: the Appendix-B mixture, from its own episodes (stream [seed, agent_id]).

    Besides the arrays every dataset has, `mixture_part` [n] int8 says which MIXTURE part
    each transition comes from (0 early, 1 own intermediate, 2 own expert, 3 all expert),
    for analysis only, like `states`.

    The same bytes on every x86 machine: the episodes are chaotic, so one action that differs in its last bit
    gives another dataset. MuJoCo's physics (float64) and numpy's random streams are the same everywhere, but
    a float32 actor's matrix products are not: torch calls MKL, whose kernel depends on the CPU (on one Intel
    VM, halfcheetah-2x3's agent_0.npz hashed 91625f60 with MKL's AVX-512 path, 84d8b549 with
    MKL_ENABLE_INSTRUCTIONS=AVX2, bf5d60c4 with AVX or SSE4_2; an AMD VM built 6439127a). In float64 the
    kernels differ by ~1e-16, far below the float32 rounding of the stored action: two paths can disagree only
    on an action that falls that close to a rounding boundary, and the full halfcheetah-2x3 build (2 x 1e6
    transitions) came out bit-identical under MKL's AVX-512 and SSE4.2 paths (tests/test_mamujoco.py compares
    3000-transition builds under four settings)."""
    import torch

    if n_transitions <= 0 or episode_len <= 0 or noise_std < 0:
        raise envs.InputError("mamujoco datasets need n_transitions > 0, episode_len > 0 and noise_std >= 0")
    actors = {level: actor.to(getattr(torch, actor_dtype)) for level, actor in load_behavior(env, behavior_dir).items()}  # checked by envs.resolve
    rng = np.random.default_rng([seed, agent_id])
    shares = [share for share, _, _ in MIXTURE]
    counts = [int(round(share * n_transitions)) for share in shares[:-1]]
    counts.append(n_transitions - sum(counts))
    if progress is not None:
        progress.reset(total=n_transitions)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of <= 64 states: more threads only contend with the simulation
    try:
        parts = []
        for (_, own_level, others_level), count in zip(MIXTURE, counts):
            if count > 0:
                policy = behavior_policy(env, actors, agent_id, own_level, others_level, noise_std, rng)
                parts.append(rollout(env, policy, count, episode_len, rng, progress))
    finally:
        torch.set_num_threads(threads)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    states = data.pop("states")
    return dict(
        obs=env.observe(states)[agent_id],
        actions=env.split(data["actions"])[agent_id].astype(np.float32),  # agent i's own action only
        rewards=data["rewards"],
        next_obs=env.observe(data["next_states"])[agent_id],
        dones=data["dones"],
        timeouts=data["timeouts"],
        states=states,
        mixture_part=np.concatenate([np.full(count, part, dtype=np.int8) for part, count in enumerate(counts)]),
    )


def dataset_summary(data: dict) -> dict:
    """Episodes, transitions and mean return (undiscounted, per episode) of the whole dataset and of each
    mixture part. An episode cut short by its part's transition budget counts with its shorter return."""
    ends = np.flatnonzero(data["dones"] | data["timeouts"])
    starts = np.r_[0, ends[:-1] + 1]
    returns = np.add.reduceat(data["rewards"].astype(np.float64), starts)
    parts = data["mixture_part"][starts]
    out = dict(episodes=int(len(ends)), transitions=int(len(data["rewards"])), return_mean=float(returns.mean()),
               return_std=float(returns.std()), terminated=int(data["dones"].sum()))
    for part, (_, own, others) in enumerate(MIXTURE):
        mine = returns[parts == part]
        out[f"part{part}_{own}_{others}_episodes"] = int(len(mine))
        out[f"part{part}_{own}_{others}_return_mean"] = float(mine.mean()) if len(mine) else float("nan")
    return out


class Task:
    """One env id behind the interface envs.REGISTRY expects of an env module."""

    ENV_DEFAULTS = ENV_DEFAULTS
    RECIPE_DEFAULTS = RECIPE_DEFAULTS
    PINNED_PACKAGES = PINNED_PACKAGES
    collect = staticmethod(collect)  # the env object knows its id
    dataset_summary = staticmethod(dataset_summary)

    def __init__(self, env_id: str):
        self.env_id = env_id

    def make(self, **env_kwargs) -> MultiAgentMuJoCo:
        return make(self.env_id, **env_kwargs)

    def preflight(self, env: MultiAgentMuJoCo, recipe: dict) -> None:
        """The behaviour actors exist and fit the robot: checked before a dataset folder is made."""
        load_behavior(env, recipe["behavior_dir"])

    def fingerprint(self, recipe: dict) -> str | None:
        """Hash of the behaviour actors a dataset is built from: a retrain invalidates older datasets."""
        files = [Path(recipe["behavior_dir"] or BEHAVIOR_DIR) / self.env_id / f"{level}.pt" for level in LEVELS]
        if not all(f.exists() for f in files):
            return None
        digest = hashlib.sha1()
        for f in files:
            digest.update(f.read_bytes())
        return digest.hexdigest()[:16]


halfcheetah_2x3 = Task("halfcheetah-2x3")
walker2d_2x3 = Task("walker2d-2x3")
hopper_3x1 = Task("hopper-3x1")
ant_2x4 = Task("ant-2x4")
