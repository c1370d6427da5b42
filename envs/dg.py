"""Differential Game (DG) of the paper's Section 5.4, vectorised in numpy.

Two agents move on [-1, 1]. Agent i's action a_i in [-1, 1] moves it by 0.1 * a_i
(speed in [-0.1, 0.1]); positions are clipped to [-1, 1]. The shared reward depends
on l = sqrt(x1^2 + x2^2) of the positions *before* the move:

    r = 0.5 * (cos(15 l) + 1)   if l < 0.2      (a narrow peak at the origin)
        0                       if 0.2 <= l <= 0.6
        0.5 * (l - 0.6)^2       if l > 0.6      (a wide, low rise towards the corners)

The paper does not state the episode setup; like the same authors' public
differential-game code (jiechuanjiang/I2Q, `Differential Game/`) dataset episodes
last 25 steps and end on a time limit (stored as `timeout`, never `done`),
evaluation episodes last 100 steps, and starts are uniform in [-1, 1]^2.

Observation: `full` gives agent i [x_i, x_j] (own position first), `partial` [x_i].
"""

import numpy as np

ENV_DEFAULTS = dict(
    obs="full",  # "full": [own x, other x]; "partial": [own x]
    eval_episode_len=100,  # steps of an evaluation episode (team return = undiscounted sum)
    start_low=-1.0,  # starts are uniform in [start_low, start_high]^2
    start_high=1.0,
)
RECIPE_DEFAULTS = dict(
    n_transitions=1_000_000,  # per agent, each from its own episodes
    episode_len=25,  # dataset episodes end on this time limit (timeout, not terminal)
    seed=0,
)
N_AGENTS = 2
SPEED = 0.1


def reward(x: np.ndarray) -> np.ndarray:
    """Shared reward of positions x [..., 2] (before the move)."""
    l = np.sqrt((x**2).sum(-1))
    r = np.zeros_like(l)
    near = l < 0.2
    far = l > 0.6
    r[near] = 0.5 * (np.cos(15 * l[near]) + 1)
    r[far] = 0.5 * (l[far] - 0.6) ** 2
    return r


class DifferentialGame:
    """A batch of independent DG episodes. State x: [n_envs, 2]."""

    discrete = False

    def __init__(self, obs="full", eval_episode_len=100, start_low=-1.0, start_high=1.0):
        if obs not in ("full", "partial"):
            raise ValueError(f"dg: --obs must be 'full' or 'partial', got {obs!r}")
        if not start_low < start_high:
            raise ValueError(f"dg: start_low ({start_low}) must be below start_high ({start_high})")
        self.obs_mode = obs
        self.eval_episode_len = int(eval_episode_len)
        self.start_low, self.start_high = float(start_low), float(start_high)
        self.n_agents = N_AGENTS
        self.obs_dims = [2 if obs == "full" else 1] * N_AGENTS
        self.act_dims = [1] * N_AGENTS
        self.state_dim = 2

    def observe(self, state: np.ndarray) -> list[np.ndarray]:
        """Per-agent observations of states [n, 2] -> N arrays [n, obs_dim]."""
        if self.obs_mode == "partial":
            return [state[:, [i]].astype(np.float32) for i in range(N_AGENTS)]
        return [state[:, [i, 1 - i]].astype(np.float32) for i in range(N_AGENTS)]

    def reset(self, n_envs: int, rng: np.random.Generator) -> list[np.ndarray]:
        self.state = rng.uniform(self.start_low, self.start_high, size=(n_envs, 2))
        return self.observe(self.state)

    def step(self, actions: list[np.ndarray]):
        """actions: N arrays [n_envs, 1] in [-1, 1] -> (obs list, reward [n_envs], terminated [n_envs])."""
        a = np.clip(np.concatenate(actions, axis=1), -1.0, 1.0)
        r = reward(self.state)
        self.state = np.clip(self.state + SPEED * a, -1.0, 1.0)
        return self.observe(self.state), r.astype(np.float32), np.zeros(len(r), dtype=bool)


def make(**kwargs) -> DifferentialGame:
    return DifferentialGame(**kwargs)


def collect(env: DifferentialGame, agent_id: int, n_transitions: int, episode_len: int, seed: int, progress=None):
    """Agent `agent_id`'s dataset: its own episodes of uniform random play by both agents.

    All episodes run side by side (one batched step per time step), so 1e6 transitions
    take about a second.
    """
    rng = np.random.default_rng([seed, agent_id])
    n_episodes = -(-n_transitions // episode_len)
    env.reset(n_episodes, rng)
    states, actions, rewards, next_states = [], [], [], []
    for _ in range(episode_len):
        a = rng.uniform(-1.0, 1.0, size=(n_episodes, N_AGENTS))
        state = env.state
        _, r, _ = env.step([a[:, [0]], a[:, [1]]])
        states.append(state)
        actions.append(a[:, [agent_id]])
        rewards.append(r)
        next_states.append(env.state)
        if progress is not None:
            progress.update(n_episodes)
    # [episode_len, n_episodes, ...] -> episode-major [n_episodes * episode_len, ...]
    state = np.stack(states, 1).reshape(-1, 2)[:n_transitions]
    next_state = np.stack(next_states, 1).reshape(-1, 2)[:n_transitions]
    timeout = np.zeros((n_episodes, episode_len), dtype=bool)
    timeout[:, -1] = True
    return dict(
        obs=env.observe(state)[agent_id],
        actions=np.stack(actions, 1).reshape(-1, 1)[:n_transitions].astype(np.float32),
        rewards=np.stack(rewards, 1).reshape(-1)[:n_transitions].astype(np.float32),
        next_obs=env.observe(next_state)[agent_id],
        dones=np.zeros(len(state), dtype=bool),
        timeouts=timeout.reshape(-1)[:n_transitions],
        states=state.astype(np.float32),
    )
