"""Multi-agent MuJoCo (Section 5.3, Appendix B), vectorised over a batch of episodes.

Four env ids over gymnasium_robotics' mamujoco_v1 partitions of the v5 robots:
`halfcheetah-2x3`, `walker2d-2x3`, `hopper-3x1`, `ant-2x4`. Each agent drives the joints
mamujoco gives it; the joint action is assembled from the agents' actions with mamujoco's
own action mapping (`agent_action_partitions`, the same `act_ids` its
`map_local_actions_to_global_action` uses). As in the paper, every agent observes the
full robot state -- the single-agent v5 observation, which is mamujoco's `state()`, not its
local observations -- and the shared reward.

Episodes run on one plain single-agent MuJoCo env per episode (what mamujoco steps
underneath), without time-limit wrappers: evaluation episodes last `eval_episode_len`
steps, and Hopper, Walker2d and Ant end early on a true termination. A terminated episode
stays frozen (same state, reward 0, terminated), so a batch can run on.

Datasets follow Appendix B: agent i's 1e6 transitions come from its own episodes, 20% of
the early-training SAC policy (sampled, as the learner acted while it trained), 35% with
agent i on the intermediate policy and the others on the expert, 35% the other way round,
10% all expert, with small Gaussian noise on the actions of the last three parts. The
behaviour policies are single-agent SAC actors (envs/behavior/sac.py) whose joint action is
split by the partition; their weights live in envs/behavior/weights/<env id>/.

Scores are D4RL-normalised with D4RL's reference returns. Those were measured on the v2
envs (mujoco-py, MuJoCo 1.5); the v5 envs here differ slightly (newer MuJoCo physics; v5
pays the healthy reward only while healthy; Walker2d-v5 gives both feet the same friction;
Ant-v5 always charges the contact cost and observes 105 numbers, not 111), so normalised
scores compare with the paper's only approximately.

gymnasium, gymnasium_robotics, mujoco and torch are imported where first needed, so that
`import envs` stays light for the other envs.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np

import envs

PINNED_PACKAGES = ("mujoco",)  # physics differ between MuJoCo releases: datasets record and check it
ENV_DEFAULTS = dict(
    eval_episode_len=1000,  # steps of an evaluation episode (fewer if the robot terminates)
)
RECIPE_DEFAULTS = dict(
    n_transitions=1_000_000,  # per agent, each from its own episodes
    seed=0,
    noise_std=0.1,  # std of the Gaussian noise on every agent's action in the last three parts
    episode_len=1000,  # dataset episodes end on this time limit (timeout), if they do not terminate first
    behavior_dir="",  # folder holding <env id>/{early,intermediate,expert}.pt; "" = the weights shipped in envs/behavior/weights
)
TASKS = {
    # env id: mamujoco scenario and partition, D4RL's random and expert reference returns
    "halfcheetah-2x3": dict(scenario="HalfCheetah", agent_conf="2x3", d4rl_random=-280.178953, d4rl_expert=12135.0),
    "walker2d-2x3": dict(scenario="Walker2d", agent_conf="2x3", d4rl_random=1.629008, d4rl_expert=4592.3),
    "hopper-3x1": dict(scenario="Hopper", agent_conf="3x1", d4rl_random=-20.272305, d4rl_expert=3234.3),
    "ant-2x4": dict(scenario="Ant", agent_conf="2x4", d4rl_random=-325.6, d4rl_expert=3879.7),
}
BEHAVIOR_DIR = Path(__file__).resolve().parent / "behavior" / "weights"
LEVELS = ("early", "intermediate", "expert")
# Appendix B: (share of B_i, policy agent i plays, policy the other agents play)
MIXTURE = (
    (0.20, "early", "early"),  # early-training experience: every agent samples the early SAC policy
    (0.35, "intermediate", "expert"),
    (0.35, "expert", "intermediate"),
    (0.10, "expert", "expert"),
)
PARALLEL_EPISODES = 64  # dataset episodes run side by side: one batched policy call serves them all


def normalized_score(env_id: str, team_return):
    """D4RL-normalised score: 0 = D4RL's random policy, 100 = D4RL's expert (v2 references, see above)."""
    task = TASKS[env_id]
    return 100 * (np.asarray(team_return) - task["d4rl_random"]) / (task["d4rl_expert"] - task["d4rl_random"])


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to stderr instead of a MUJOCO_LOG.TXT in the working directory.

    MuJoCo 4.0 appends every warning to MUJOCO_LOG.TXT in the cwd; HalfCheetah-v5's model
    alone raises a harmless deprecation warning (`settotalmass`) each time it is loaded.
    That one is dropped, the others are printed. A handler someone else installed is kept."""
    import mujoco

    if mujoco.get_mju_user_warning() is not None:
        return

    def warn(message: str) -> None:
        if "settotalmass" not in message:
            print(f"MuJoCo warning: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(warn)


class MultiAgentMuJoCo:
    """A batch of independent episodes of one robot. State: the v5 observation, [n_envs, state_dim]."""

    discrete = False

    def __init__(self, env_id: str, eval_episode_len: int = 1000):
        import gymnasium
        from gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi import MultiAgentMujocoEnv

        if eval_episode_len <= 0:
            raise ValueError(f"{env_id}: --eval-episode-len must be > 0, got {eval_episode_len}")
        route_mujoco_warnings()
        task = TASKS[env_id]
        self.env_id = env_id
        self.gym_id = f"{task['scenario']}-v5"
        self.eval_episode_len = int(eval_episode_len)
        # mamujoco's factorisation: agent i drives joint-action entries action_index[i]
        self.mamujoco = MultiAgentMujocoEnv(task["scenario"], task["agent_conf"])
        self.action_index = [np.array([node.act_ids for node in part]) for part in self.mamujoco.agent_action_partitions]
        single = self.mamujoco.single_agent_env
        self.joint_act_dim = single.action_space.shape[0]
        if sorted(np.concatenate(self.action_index).tolist()) != list(range(self.joint_act_dim)):
            raise ValueError(f"{env_id}: mamujoco's partition does not cover every action exactly once")
        if not (np.all(single.action_space.low == -1) and np.all(single.action_space.high == 1)):
            raise ValueError(f"{env_id}: expected actions in [-1, 1], got {single.action_space}")
        self.n_agents = len(self.action_index)
        self.state_dim = single.observation_space.shape[0]
        self.obs_dims = [self.state_dim] * self.n_agents  # every agent sees the full state
        self.act_dims = [len(index) for index in self.action_index]
        self._make_sim = lambda: gymnasium.make(self.gym_id).unwrapped  # the plain MujocoEnv, no wrappers
        self._sims = []  # one per episode of the batch, created on demand and reused

    # joint action <-> per-agent actions, by mamujoco's partition
    def split(self, joint: np.ndarray) -> list[np.ndarray]:
        """[..., joint_act_dim] -> N arrays [..., act_dim_i]."""
        return [joint[..., index] for index in self.action_index]

    def merge(self, actions: list[np.ndarray]) -> np.ndarray:
        """N arrays [..., act_dim_i] -> [..., joint_act_dim]."""
        joint = np.empty((*actions[0].shape[:-1], self.joint_act_dim), dtype=np.result_type(*actions))
        for index, action in zip(self.action_index, actions):
            joint[..., index] = action
        return joint

    def observe(self, states: np.ndarray) -> list[np.ndarray]:
        """Every agent observes the full state: states [n, state_dim] -> N arrays [n, state_dim]."""
        return [np.asarray(states, dtype=np.float32).copy() for _ in range(self.n_agents)]

    def reset(self, n_envs: int, rng: np.random.Generator) -> list[np.ndarray]:
        while len(self._sims) < n_envs:
            self._sims.append(self._make_sim())
        self.n_envs = n_envs
        self.state = np.zeros((n_envs, self.state_dim))  # float64, as MuJoCo gives it
        self.terminated = np.zeros(n_envs, dtype=bool)
        self.reset_episodes(np.arange(n_envs), rng)
        return self.observe(self.state)

    def reset_episodes(self, indices, rng: np.random.Generator) -> None:
        """Start new episodes in some slots of the batch; the others run on."""
        for k in indices:
            self.state[k] = self._sims[k].reset(seed=int(rng.integers(2**32)))[0]
            self.terminated[k] = False

    def step_joint(self, joint_actions: np.ndarray):
        """joint_actions [n_envs, joint_act_dim] -> (states [n_envs, state_dim] float32, reward [n_envs], terminated [n_envs]).

        Slots whose episode has terminated are not stepped: same state, reward 0, terminated."""
        joint_actions = np.clip(joint_actions, -1.0, 1.0)  # the v5 control cost is computed on the raw action
        reward = np.zeros(self.n_envs, dtype=np.float32)
        for k in np.flatnonzero(~self.terminated):
            self.state[k], reward[k], self.terminated[k], _, _ = self._sims[k].step(joint_actions[k])
        return self.state.astype(np.float32), reward, self.terminated.copy()

    def step(self, actions: list[np.ndarray]):
        """actions: N arrays [n_envs, act_dim_i] in [-1, 1] -> (obs list, reward [n_envs], terminated [n_envs])."""
        states, reward, terminated = self.step_joint(self.merge(actions))
        return self.observe(states), reward, terminated


def make(env_id: str, **kwargs) -> MultiAgentMuJoCo:
    return MultiAgentMuJoCo(env_id, **kwargs)


def episode_returns(env: MultiAgentMuJoCo, policy, n_episodes: int, seed) -> np.ndarray:
    """Undiscounted returns of `policy` (states [n, state_dim] -> joint actions) over
    `n_episodes` episodes of `eval_episode_len` steps, run side by side."""
    env.reset(n_episodes, np.random.default_rng(seed))
    states = env.state.astype(np.float32)
    returns, alive = np.zeros(n_episodes), np.ones(n_episodes, dtype=bool)
    for _ in range(env.eval_episode_len):
        states, reward, terminated = env.step_joint(policy(states))
        returns += alive * reward
        alive &= ~terminated
        if not alive.any():
            break
    return returns


def load_behavior(env: MultiAgentMuJoCo, behavior_dir: str = "") -> dict:
    """The early, intermediate and expert SAC actors of the robot, {level: Actor}."""
    from envs.behavior.sac import load_actor  # not at the top: sac.py imports this module

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
    """The joint policy of one mixture part: states [n, state_dim] -> joint actions [n, joint_act_dim].

    The early part samples the SAC policy (tanh of a Gaussian); the others act with the
    actors' deterministic actions (tanh of the mean) plus N(0, noise_std^2) noise, clipped."""
    import torch

    levels = [own_level if j == agent_id else others_level for j in range(env.n_agents)]

    @torch.no_grad()
    def policy(states: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(states, dtype=torch.float32)
        if own_level == "early":
            noise = torch.as_tensor(rng.standard_normal((len(states), env.joint_act_dim)), dtype=torch.float32)
            return actors["early"].act(obs, noise).numpy()
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
            episode_len: int, behavior_dir: str, progress=None) -> dict:
    """Agent `agent_id`'s dataset: the Appendix-B mixture, from its own episodes (stream [seed, agent_id]).

    Besides the arrays every dataset has, `mixture_part` [n] int8 says which MIXTURE part
    each transition comes from (0 early, 1 own intermediate, 2 own expert, 3 all expert),
    for analysis only, like `states`."""
    import torch

    if n_transitions <= 0 or episode_len <= 0 or noise_std < 0:
        raise envs.InputError("mamujoco datasets need n_transitions > 0, episode_len > 0 and noise_std >= 0")
    actors = load_behavior(env, behavior_dir)
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
