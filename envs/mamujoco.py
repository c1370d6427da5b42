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

This module is an adapter (envs/__init__.py): it imports no learner and no recipe. The
dataset recipe -- loading the SAC actors and running the mixture -- is envs/recipes/mamujoco.py,
which the registry points at; the learner is envs/behavior/sac.py.

gymnasium, gymnasium_robotics and mujoco are imported where first needed, so that
`import envs` stays light for the other envs.
"""

import sys
from pathlib import Path

import numpy as np


PINNED_PACKAGES = ("mujoco",)  # physics differ between MuJoCo releases: datasets record and check it
ENV_DEFAULTS = dict(
    eval_episode_len=1000,  # steps of an evaluation episode (fewer if the robot terminates)
)
RECIPE_DEFAULTS = dict(  # how the datasets are made: envs/recipes/mamujoco.py
    n_transitions=1_000_000,  # per agent, each from its own episodes
    seed=0,
    noise_std=0.1,  # std of the Gaussian noise on every agent's action in the last three parts
    episode_len=1000,  # dataset episodes end on this time limit (timeout), if they do not terminate first
    behavior_dir="",  # folder holding <env id>/{early,intermediate,expert}.pt; "" = the weights shipped in envs/behavior/weights
    # the behaviour actors' arithmetic: float64 rounds every action to the same float32 on any x86 CPU (float32 gives
    # other bytes under another BLAS code path: MKL's dispatch; envs/recipes/mamujoco.py); "float32": datasets before 2026-12-02
    actor_dtype="float64",
)
TASKS = {
    # env id: mamujoco scenario and partition, D4RL's random and expert reference returns
    "halfcheetah-2x3": dict(scenario="HalfCheetah", agent_conf="2x3", d4rl_random=-280.178953, d4rl_expert=12135.0),
    "walker2d-2x3": dict(scenario="Walker2d", agent_conf="2x3", d4rl_random=1.629008, d4rl_expert=4592.3),
    "hopper-3x1": dict(scenario="Hopper", agent_conf="3x1", d4rl_random=-20.272305, d4rl_expert=3234.3),
    "ant-2x4": dict(scenario="Ant", agent_conf="2x4", d4rl_random=-325.6, d4rl_expert=3879.7),
}
BEHAVIOR_DIR = Path(__file__).resolve().parent / "behavior" / "weights"
LEVELS = ("early", "intermediate", "expert")  # the behaviour actors a learner leaves, envs/behavior/sac.py
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
        self.env_id = self.reference_env_id = env_id  # reference: D4RL's returns and the scripts' presets
        self.normalized_score = lambda returns: normalized_score(env_id, returns)
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
