"""Cooperative Navigation (CN) of the paper's Section 5.4: mpe2 `simple_spread_v3`, vectorised in numpy.

N = 4 agents must cover N = 4 landmarks. This module re-implements mpe2 1.1.1's
simple_spread (`N=4, local_ratio=0.0, continuous_actions=True`) over a batch of
episodes, so that 1e6 transitions per agent collect in seconds (mpe2 steps one
episode at a time, ~2.5k steps/s). tests/test_cn.py checks it against mpe2 itself,
step for step (observations and rewards to ~1e-6, collisions included); mpe2 is
needed only there (`mpe2_reference_env`), never to build or use a dataset.

Dynamics (mpe2 `_mpe_utils/core.py`, `World.step`), per step, all agents at once:
    u_i     = 5 * (a_right - a_left, a_up - a_down)   (sensitivity 5: agents have accel None)
    f_i     = u_i + sum_{j != i, ascending j} c_ij    (contact forces between agents only)
    c_ij    = 100 * (p_i - p_j) / |p_i - p_j| * 1e-3 * log(1 + exp(-(|p_i - p_j| - 0.3) / 1e-3))
    p_i    <- p_i + 0.1 * v_i                         (dt 0.1, with the *old* velocity)
    v_i    <- 0.75 * v_i + 0.1 * f_i / 1              (damping 0.25, mass 1, no max speed, no noise)
Agents have size 0.15 (contact distance 0.3) and collide with each other; landmarks do
not collide and never move. Agents and landmarks start uniform in [-1, 1]^2 (agents
first, then landmarks, as mpe2 draws them: `reset(1, np.random.default_rng(s))` starts
where mpe2's `reset(seed=s)` does), velocities at 0. Positions are unbounded.

Reward: the shared r = -sum_j min_i |p_i - l_j| (the distance from landmark j to its
closest agent), of the positions *after* the move, as mpe2 rewards. The paper (5.4)
has no collision term. mpe2 gives agent i
`global_reward * (1 - local_ratio) + agent_reward_i * local_ratio`, agent_reward_i being
-1 per agent overlapping agent i; with `local_ratio=0` that is `global_reward * 1 +
agent_reward_i * 0 = global_reward` exactly (x * 0 is +-0, and global + -0 = global), the
same for every agent, collisions or not: exactly the paper's reward. (Contacts still push
agents apart: that is physics, not reward.)

Observation of agent i (mpe2's, 24 dims): [v_i (2), p_i (2), l_j - p_i for the 4
landmarks (8), p_k - p_i for the 3 other agents in index order (6), their communication
(6, always 0: simple_spread agents are silent)]. float32, as mpe2 returns it.

Global state (`state_dim` 24, stored as `states` in the datasets, `observe(states)` maps
it to every agent's observation): [p_0..p_3 (8), v_0..v_3 (8), l_0..l_3 (8)].

Actions: a 2-dim force a_i in [-1, 1]^2 (act_dim 2; out-of-range values are clipped),
mapped exactly onto mpe2's 5-dim Box(0, 1) action [no_action, left, right, down, up] by
`to_mpe2_action`: right = max(a_x, 0), left = max(-a_x, 0), up = max(a_y, 0),
down = max(-a_y, 0), no_action = 0 (mpe2 ignores it). mpe2 forms u from the differences
right - left and up - down only, so u = 5 a exactly and every u mpe2 can produce
([-5, 5]^2) is reachable: nothing is lost, and the 3 redundant dims are gone. Why 2 dims:
they are the paper's "speed" actions of DG/MPE, the algorithm scripts' actors output
[-1, 1]^act_dim directly, and a uniform-random behaviour policy is simply uniform on
[-1, 1]^2, i.e. u uniform on [-5, 5]^2 (each component variance 25/3). Uniform over
mpe2's own Box(0, 1)^5 would instead give u_x = 5 (U_right - U_left), triangular on
[-5, 5] and peaked at 0 (variance 25/6: half as much), plus an unused dim; the datasets
here are uniform in the 2-dim space.

Episodes: mpe2's `max_cycles` = 25 is a time limit. Dataset episodes last `episode_len`
steps (recipe option `--episode-len`, default 25 = max_cycles) and end in `timeout`,
never `done`; evaluation episodes last `eval_episode_len` (env option, default 25).
`step` itself never terminates (`terminated` is always False) so the scripts can roll
past the time limit for Monte-Carlo returns.
"""

import numpy as np

ENV_DEFAULTS = dict(
    eval_episode_len=25,  # steps of an evaluation episode (mpe2 max_cycles; team return = undiscounted sum)
)
RECIPE_DEFAULTS = dict(
    n_transitions=1_000_000,  # per agent, each from its own episodes
    episode_len=25,  # dataset episodes end on this time limit (mpe2 max_cycles; timeout, not terminal)
    seed=0,
)
N_AGENTS = 4
N_LANDMARKS = 4
DIM_P = 2  # positions are 2-d
DIM_C = 2  # mpe2's communication dims (silent agents: always 0, kept in the observation)
# mpe2 1.1.1 World / simple_spread constants
DT = 0.1
DAMPING = 0.25
CONTACT_FORCE = 1e2
CONTACT_MARGIN = 1e-3
AGENT_SIZE = 0.15
MASS = 1.0
SENSITIVITY = 5.0
OBS_DIM = 2 * DIM_P + DIM_P * N_LANDMARKS + (DIM_P + DIM_C) * (N_AGENTS - 1)  # 24
STATE_DIM = 2 * DIM_P * N_AGENTS + DIM_P * N_LANDMARKS  # 24
PAIRS = [(a, b) for a in range(N_AGENTS) for b in range(a + 1, N_AGENTS)]  # mpe2's loop order


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"cn: --{name.replace('_', '-')} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"cn: --{name.replace('_', '-')} must be an integer >= 0, got {value!r}")
    return int(value)


def split_state(state: np.ndarray):
    """Global states [n, 24] -> agent positions [n, 4, 2], velocities [n, 4, 2], landmarks [n, 4, 2]."""
    n = len(state)
    k = DIM_P * N_AGENTS
    return (state[:, :k].reshape(n, N_AGENTS, DIM_P), state[:, k:2 * k].reshape(n, N_AGENTS, DIM_P),
            state[:, 2 * k:].reshape(n, N_LANDMARKS, DIM_P))


def join_state(pos: np.ndarray, vel: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    n = len(pos)
    return np.concatenate([pos.reshape(n, -1), vel.reshape(n, -1), landmarks.reshape(n, -1)], axis=1)


def reward(pos: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """-sum_j min_i |p_i - l_j| of positions [n, 4, 2] and landmarks [n, 4, 2] -> [n] (float64).

    Summed landmark by landmark in mpe2's order, so it equals mpe2's global reward to the last bit."""
    P = np.ascontiguousarray(pos.transpose(2, 1, 0))  # [2, agents, n]: contiguous rows, 3x faster
    L = np.ascontiguousarray(landmarks.transpose(2, 1, 0))
    r = np.zeros(P.shape[-1])
    for j in range(L.shape[1]):
        dx, dy = P[0] - L[0, j], P[1] - L[1, j]
        r = r - np.sqrt(dx * dx + dy * dy).min(0)
    return r


def to_mpe2_action(a: np.ndarray) -> np.ndarray:
    """This env's actions [..., 2] in [-1, 1] -> mpe2's continuous actions [..., 5] in [0, 1]
    ([no_action, left, right, down, up]); mpe2 turns them into u = 5 * a exactly."""
    a = np.clip(np.asarray(a), -1.0, 1.0)
    zero = np.zeros_like(a[..., 0])
    return np.stack([zero, np.maximum(-a[..., 0], 0), np.maximum(a[..., 0], 0),
                     np.maximum(-a[..., 1], 0), np.maximum(a[..., 1], 0)], axis=-1) + 0.0  # + 0.0: no -0


def physics_step(pos: np.ndarray, vel: np.ndarray, a: np.ndarray):
    """mpe2's World.step for positions, velocities [n, 4, 2] and actions [n, 4, 2] in [-1, 1] -> (pos, vel).

    The same operations in the same order as mpe2 (forces of the pairs added in its loop order), so the result is
    mpe2's to the last bit; computed on contiguous [2, agents, n] arrays for speed."""
    P = np.ascontiguousarray(pos.transpose(2, 1, 0))
    V = np.ascontiguousarray(vel.transpose(2, 1, 0))
    F = np.ascontiguousarray(a.transpose(2, 1, 0)) * SENSITIVITY  # u = (right - left, up - down) * sensitivity
    for i, j in PAIRS:
        dx, dy = P[0, i] - P[0, j], P[1, i] - P[1, j]
        dist = np.sqrt(dx * dx + dy * dy)
        penetration = np.logaddexp(0, -(dist - 2 * AGENT_SIZE) / CONTACT_MARGIN) * CONTACT_MARGIN
        fx, fy = CONTACT_FORCE * dx / dist * penetration, CONTACT_FORCE * dy / dist * penetration
        F[0, i], F[1, i] = fx + F[0, i], fy + F[1, i]
        F[0, j], F[1, j] = -fx + F[0, j], -fy + F[1, j]
    P = P + V * DT
    V = V * (1 - DAMPING)
    V = V + (F / MASS) * DT
    return np.ascontiguousarray(P.transpose(2, 1, 0)), np.ascontiguousarray(V.transpose(2, 1, 0))


class CooperativeNavigation:
    """A batch of independent CN episodes. State: `pos`, `vel`, `landmarks` [n_envs, 4, 2] (float64)."""

    discrete = False

    def __init__(self, eval_episode_len=25):
        self.eval_episode_len = _positive_int("eval_episode_len", eval_episode_len)
        self.n_agents = N_AGENTS
        self.obs_dims = [OBS_DIM] * N_AGENTS
        self.act_dims = [2] * N_AGENTS
        self.state_dim = STATE_DIM

    @property
    def state(self) -> np.ndarray:
        """The batch's global states [n_envs, 24] (positions, velocities, landmarks)."""
        return join_state(self.pos, self.vel, self.landmarks)

    @state.setter
    def state(self, state: np.ndarray) -> None:
        pos, vel, landmarks = split_state(np.asarray(state, dtype=np.float64))
        self.pos, self.vel, self.landmarks = pos.copy(), vel.copy(), landmarks.copy()

    def observe(self, state: np.ndarray) -> list[np.ndarray]:
        """Per-agent observations of global states [n, 24] -> 4 arrays [n, 24] (float32)."""
        return [self.observe_agent(state, i) for i in range(N_AGENTS)]

    @staticmethod
    def observe_agent(state: np.ndarray, i: int) -> np.ndarray:
        """Agent i's observations of global states [n, 24] -> [n, 24] (float32; differences taken in the states'
        precision, then rounded, as mpe2 does)."""
        pos, vel, landmarks = split_state(np.asarray(state))
        n, k = len(pos), 2 * DIM_P
        out = np.zeros((n, OBS_DIM), dtype=np.float32)  # the last 6 columns: silent communication, 0
        out[:, 0:2], out[:, 2:4] = vel[:, i], pos[:, i]
        out[:, k:k + DIM_P * N_LANDMARKS] = (landmarks - pos[:, i, None]).reshape(n, -1)
        k += DIM_P * N_LANDMARKS
        others = [j for j in range(N_AGENTS) if j != i]
        out[:, k:k + DIM_P * (N_AGENTS - 1)] = (pos[:, others] - pos[:, i, None]).reshape(n, -1)
        return out

    def reset(self, n_envs: int, rng: np.random.Generator) -> list[np.ndarray]:
        start = rng.uniform(-1, 1, size=(n_envs, N_AGENTS + N_LANDMARKS, DIM_P))  # mpe2's draw order
        self.pos, self.landmarks = start[:, :N_AGENTS].copy(), start[:, N_AGENTS:].copy()
        self.vel = np.zeros_like(self.pos)
        return self.observe(self.state)

    def advance(self, a: np.ndarray) -> np.ndarray:
        """Actions [n_envs, 4, 2] (clipped to [-1, 1]) -> the team reward [n_envs] (float64) of the new positions."""
        a = np.clip(np.asarray(a, dtype=np.float64), -1.0, 1.0)
        self.pos, self.vel = physics_step(self.pos, self.vel, a)
        return reward(self.pos, self.landmarks)

    def step(self, actions: list[np.ndarray]):
        """actions: 4 arrays [n_envs, 2] in [-1, 1] -> (obs list, reward [n_envs] of the new positions, terminated
        [n_envs], always False: the episode length is a time limit)."""
        r = self.advance(np.stack([np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in actions], axis=1))
        return self.observe(self.state), r.astype(np.float32), np.zeros(len(r), dtype=bool)


def make(**kwargs) -> CooperativeNavigation:
    return CooperativeNavigation(**kwargs)


def collect(env: CooperativeNavigation, agent_id: int, n_transitions: int, episode_len: int, seed: int, progress=None):
    """Agent `agent_id`'s dataset: its own episodes (random stream [seed, agent_id]) of uniform random play by all
    agents (each action uniform in [-1, 1]^2). Episodes end on the `episode_len` time limit (`timeouts`); no
    `dones`. All episodes run side by side, so 1e6 transitions take a few seconds."""
    n_transitions = _positive_int("n_transitions", n_transitions)
    episode_len = _positive_int("episode_len", episode_len)
    seed = _non_negative_int("seed", seed)
    if not 0 <= agent_id < N_AGENTS:
        raise ValueError(f"cn: agent id must lie in 0..{N_AGENTS - 1}, got {agent_id!r}")
    rng = np.random.default_rng([seed, agent_id])
    n_episodes = -(-n_transitions // episode_len)
    env.reset(n_episodes, rng)
    states = np.empty((n_episodes, episode_len + 1, STATE_DIM))  # the states an episode visits, in order
    actions = np.empty((n_episodes, episode_len, 2), dtype=np.float32)
    rewards = np.empty((n_episodes, episode_len), dtype=np.float32)
    for t in range(episode_len):
        a = rng.uniform(-1.0, 1.0, size=(n_episodes, N_AGENTS, 2))
        states[:, t] = env.state
        rewards[:, t] = env.advance(a)  # a step without the observations (computed once, below, for agent_id)
        actions[:, t] = a[:, agent_id]
        if progress is not None:
            progress.update(n_episodes)
    states[:, -1] = env.state
    # episode-major [n_episodes * episode_len, ...]
    state = states[:, :-1].reshape(-1, STATE_DIM)[:n_transitions]
    next_state = states[:, 1:].reshape(-1, STATE_DIM)[:n_transitions]
    timeout = np.zeros((n_episodes, episode_len), dtype=bool)
    timeout[:, -1] = True
    return dict(
        obs=env.observe_agent(state, agent_id),
        actions=actions.reshape(-1, 2)[:n_transitions],
        rewards=rewards.reshape(-1)[:n_transitions],
        next_obs=env.observe_agent(next_state, agent_id),
        dones=np.zeros(len(state), dtype=bool),
        timeouts=timeout.reshape(-1)[:n_transitions],
        states=state.astype(np.float32),
    )


def dataset_summary(data: dict) -> dict:
    """Episodes and their undiscounted team returns (episodes cut short by n_transitions count as they are)."""
    ends = np.flatnonzero(data["dones"] | data["timeouts"])
    starts = np.r_[0, ends[:-1] + 1] if len(ends) else np.array([0])
    returns = np.add.reduceat(data["rewards"].astype(np.float64), starts)
    return dict(episodes=int(len(ends)), return_mean=float(returns.mean()), return_std=float(returns.std()))


# the reference: mpe2 itself (tests only; needs mpe2 and pygame-ce)
def mpe2_reference_env(max_cycles: int = 25):
    """mpe2's simple_spread_v3 as this module simulates it (parallel API)."""
    from mpe2 import simple_spread_v3

    return simple_spread_v3.parallel_env(N=N_AGENTS, local_ratio=0.0, max_cycles=max_cycles, continuous_actions=True)


def set_mpe2_state(mpe2_env, state: np.ndarray) -> None:
    """Put one global state [24] into a (reset) mpe2 env's world."""
    pos, vel, landmarks = split_state(np.asarray(state, dtype=np.float64)[None])
    world = mpe2_env.unwrapped.world
    for i, agent in enumerate(world.agents):
        agent.state.p_pos, agent.state.p_vel = pos[0, i].copy(), vel[0, i].copy()
    for j, landmark in enumerate(world.landmarks):
        landmark.state.p_pos = landmarks[0, j].copy()
