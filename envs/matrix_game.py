"""The two-player matrix game of the paper's Table 1 (Section 2 and 5.1), as a two-step episode.

Agent 0 (the paper's agent 1) picks a row j of the payoff matrix, agent 1 (the paper's
agent 2) a column k. The one-shot game is unrolled into two steps so that the joint
action becomes visible as a next state, which is what the transition probabilities
P_B(s'|s, a_i) of Tables 2-4 are about:

    step 1: start state --(a_0, a_1)--> outcome state (j, k), reward 0
    step 2: outcome state (j, k) --(any actions)--> end, reward payoff[j, k], done = True

Both agents observe the (global) state: one-hot over [start, (0, 0), (0, 1), ..., (n-1, m-1)],
length 1 + n*m; the state after the end is all zeros. The outcome order is row-major, so
outcome (j, k) sits at index 1 + j*m + k. All actions are always available, but every
transition carries `avail_actions` / `next_avail_actions` like SMAC data.

Dataset: each agent's file comes from its own episodes of both agents playing their
behaviour policies (at both steps; the step-2 action changes nothing). One sample of the
paper's "1e5 samples per agent" is one play of the game, i.e. one episode, which gives
the agent two transitions: `n_episodes=100000` -> 200000 transitions per agent.
"""

import numpy as np

ENV_DEFAULTS = dict(
    payoff="1,5;6,1",  # rows = agent 0's actions, columns = agent 1's actions (Table 1)
    behavior="0.8,0.2;0.4,0.6",  # one row per agent: its behaviour policy's action probabilities
)
RECIPE_DEFAULTS = dict(
    n_episodes=100_000,  # plays of the game per agent (two transitions each), from the agent's own episodes
    seed=0,
)
N_AGENTS = 2


def parse_matrix(text: str, name: str) -> list[list[float]]:
    """'1,5;6,1' -> [[1.0, 5.0], [6.0, 1.0]] (rows separated by ';', entries by ',')."""
    try:
        rows = [[float(x) for x in row.split(",")] for row in str(text).split(";")]
    except ValueError:
        raise ValueError(f"matrix-game: --{name} must be rows of numbers like '1,5;6,1' (';' between rows), got {text!r}") from None
    if not all(np.isfinite(rows[r]).all() for r in range(len(rows))):
        raise ValueError(f"matrix-game: --{name} holds NaN or inf: {text!r}")
    return rows


class MatrixGame:
    """A batch of independent plays. State: one-hot [n_envs, 1 + n*m] (all zeros after the end)."""

    discrete = True
    eval_episode_len = 2

    def __init__(self, payoff="1,5;6,1", behavior="0.8,0.2;0.4,0.6"):
        rows = parse_matrix(payoff, "payoff")
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"matrix-game: --payoff rows differ in length: {payoff!r}")
        self.payoff = np.array(rows, dtype=np.float32)  # [n, m]
        n, m = self.payoff.shape
        self.behavior = [np.array(r, dtype=np.float64) for r in parse_matrix(behavior, "behavior")]
        if len(self.behavior) != N_AGENTS:
            raise ValueError(f"matrix-game: --behavior needs one row per agent (2 rows, ';' between them), got {behavior!r}")
        for i, (p, size) in enumerate(zip(self.behavior, (n, m))):
            if len(p) != size:
                raise ValueError(f"matrix-game: --behavior row {i} has {len(p)} probabilities, agent {i} has {size} actions in --payoff")
            if (p < 0).any() or abs(p.sum() - 1) > 1e-6:
                raise ValueError(f"matrix-game: --behavior row {i} must be non-negative and sum to 1, got {p.tolist()}")
            self.behavior[i] = p / p.sum()
        self.n_agents = N_AGENTS
        self.act_dims = [n, m]
        self.state_dim = 1 + n * m
        self.obs_dims = [self.state_dim] * N_AGENTS

    def outcome_index(self, a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
        """Index in the state vector of the outcome state of joint action (a0, a1)."""
        return 1 + a0 * self.act_dims[1] + a1

    def observe(self, states: np.ndarray) -> list[np.ndarray]:
        """Both agents see the full state: states [n, state_dim] -> N arrays [n, obs_dim]."""
        return [states.astype(np.float32) for _ in range(N_AGENTS)]

    def avail_actions(self) -> list[np.ndarray]:
        """Per-agent masks [n_envs, n_actions] of the current states: everything is always legal here."""
        return [np.ones((len(self.state), a), dtype=bool) for a in self.act_dims]

    def reset(self, n_envs: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        self.state = np.zeros((n_envs, self.state_dim), dtype=np.float32)
        self.state[:, 0] = 1
        return self.observe(self.state)

    def step(self, actions: list[np.ndarray]):
        """actions: N int arrays [n_envs] -> (obs list, reward [n_envs], terminated [n_envs])."""
        a0, a1 = (np.asarray(a).reshape(-1).astype(np.int64) for a in actions)
        for i, (a, size) in enumerate(zip((a0, a1), self.act_dims)):
            if len(a) != len(self.state) or (a < 0).any() or (a >= size).any():
                raise ValueError(f"matrix-game: agent {i} needs {len(self.state)} actions in [0, {size}), got {a}")
        at_start = self.state[:, 0] == 1
        outcome = self.state[:, 1:].argmax(1)  # only meaningful where the state is an outcome
        at_outcome = self.state[:, 1:].any(1)
        reward = np.where(at_outcome, self.payoff.reshape(-1)[outcome], 0).astype(np.float32)
        next_state = np.zeros_like(self.state)  # outcome states and the end lead to the end
        rows = np.flatnonzero(at_start)
        next_state[rows, self.outcome_index(a0[rows], a1[rows])] = 1
        self.state = next_state
        return self.observe(self.state), reward, ~at_start


def make(**kwargs) -> MatrixGame:
    return MatrixGame(**kwargs)


def collect(env: MatrixGame, agent_id: int, n_episodes: int, seed: int, progress=None):
    """Agent `agent_id`'s dataset: its own plays of both behaviour policies, two transitions each."""
    if n_episodes <= 0:
        raise ValueError(f"matrix-game: n_episodes must be > 0, got {n_episodes}")
    rng = np.random.default_rng([seed, agent_id])
    env.reset(n_episodes, rng)
    steps = []
    for _ in range(2):
        state, avail = env.state, env.avail_actions()[agent_id]
        joint = [rng.choice(len(p), size=n_episodes, p=p) for p in env.behavior]
        _, reward, terminated = env.step(joint)
        steps.append(dict(states=state, actions=joint[agent_id], rewards=reward, next_states=env.state,
                          dones=terminated, avail_actions=avail, next_avail_actions=env.avail_actions()[agent_id]))
        if progress is not None:
            progress.update(n_episodes)
    # [2, n_episodes, ...] -> episode-major [2 * n_episodes, ...]: (start, outcome) of episode 0, then episode 1, ...
    flat = {k: np.stack([s[k] for s in steps], 1).reshape(2 * n_episodes, *steps[0][k].shape[1:]) for k in steps[0]}
    return dict(
        obs=env.observe(flat["states"])[agent_id],
        actions=flat["actions"].astype(np.int64),
        rewards=flat["rewards"].astype(np.float32),
        next_obs=env.observe(flat["next_states"])[agent_id],
        dones=flat["dones"].astype(bool),
        timeouts=np.zeros(2 * n_episodes, dtype=bool),
        avail_actions=flat["avail_actions"],
        next_avail_actions=flat["next_avail_actions"],
        states=flat["states"].astype(np.float32),
    )
