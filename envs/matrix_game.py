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


# The paper's Tables 2-4: what an agent's dataset says about the start state, and the closed form of the
# weighted Bellman update there. mabcq_discrete.py adds what its networks say (lambda_vd, values).
def start_outcomes(env: MatrixGame, data: dict, agent_id: int):
    """The start-state transitions of one agent's data: (mask of those rows, own action, other agent's action),
    the other's action read off the outcome state, which identifies the joint action."""
    m = env.payoff.shape[1]
    first = data["obs"][:, 0] == 1
    own, outcome = data["actions"][first], data["next_obs"][first, 1:].argmax(1)
    return first, own, outcome % m if agent_id == 0 else outcome // m


def dataset_table(env: MatrixGame, data: dict, agent_id: int, lambda_tn: np.ndarray) -> dict:
    """Per (own action, other action) at the start state: counts, P_B(outcome | start, own action) and the
    mean lambda_tn in use (constant per pair for the count estimator). Rows of an action never taken are 0."""
    n_own, n_other = env.act_dims[agent_id], env.act_dims[1 - agent_id]
    first, own, other = start_outcomes(env, data, agent_id)
    counts, tn_sum = np.zeros((n_own, n_other)), np.zeros((n_own, n_other))
    np.add.at(counts, (own, other), 1)
    np.add.at(tn_sum, (own, other), lambda_tn[first])
    return dict(
        payoff=env.payoff if agent_id == 0 else env.payoff.T,  # [own, other]
        counts=counts,
        p_data=counts / np.maximum(counts.sum(1, keepdims=True), 1),
        lambda_tn=np.where(counts > 0, tn_sum / np.maximum(counts, 1), 1.0),
        lambda_tn_step2=[float(f(lambda_tn[~first])) for f in (np.mean, np.min, np.max)],  # outcome -> end: exact 1
    )


def start_transitions(env: MatrixGame, agent_id: int):
    """Every (own, other) action pair as a start-state transition of agent `agent_id`, row-major over
    [own, other]: (obs, own actions, next obs)."""
    n_own, n_other = env.act_dims[agent_id], env.act_dims[1 - agent_id]
    a, b = np.meshgrid(np.arange(n_own), np.arange(n_other), indexing="ij")
    joint = (a, b) if agent_id == 0 else (b, a)
    obs = np.zeros((a.size, env.state_dim), np.float32)
    obs[:, 0] = 1
    next_obs = np.zeros_like(obs)
    next_obs[np.arange(a.size), env.outcome_index(joint[0].ravel(), joint[1].ravel())] = 1
    return obs, a.ravel().astype(np.int64), next_obs


def closed_form(p_data, payoff, lambda_tn, use_vd, epsilon, iterations=1000):
    """Fixed point of the weighted Bellman update at the start state, per own action (rows):
    P^(s') ~ P(s') lambda_tn(s') lambda_vd(s'), lambda_vd = clip(1 + (R(s') - E) / |E|), E = sum P^ R,
    with the outcome states' values equal to their payoffs R. Returns (P^, E)."""
    weights = p_data * lambda_tn
    p_hat = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-12)  # an action never taken: all zeros
    expected = (p_hat * payoff).sum(-1)
    for _ in range(iterations if use_vd else 0):
        lambda_vd = np.clip(1 + (payoff - expected[:, None]) / (np.abs(expected[:, None]) + 1e-6), 1 - epsilon, 1 + epsilon)
        p_hat = weights * lambda_vd / np.maximum((weights * lambda_vd).sum(-1, keepdims=True), 1e-12)
        expected = (p_hat * payoff).sum(-1)
    return p_hat, expected


def print_tables(tables: list[dict], weights: str) -> None:
    """Tables 2-4 in the paper's layout, one block per agent; closed forms in brackets."""
    for t in tables:
        print(f"agent {t['agent_id']} (the paper's agent {t['agent_id'] + 1}), {weights}; closed form in brackets")
        print(f"  {'own':<4}{'other':<6}{'payoff':>6}{'P data':>8}{'lambda_tn':>10}{'lambda_vd':>10}{'P modified':>17}"
              f"{'V(next)':>8}{'expected return':>18}{'Q(s,a)/gamma':>14}")
        for a, row in enumerate(t["p_dataset"]):
            for b, p in enumerate(row):
                line = (f"  {f'a{a + 1}' if b == 0 else '':<4}{f'a{b + 1}':<6}{t['payoff'][a][b]:>6g}{p:>8.3f}{t['lambda_tn'][a][b]:>10.3f}"
                        f"{t['lambda_vd'][a][b]:>10.3f}{t['p_modified'][a][b]:>9.3f} ({t['p_closed_form'][a][b]:.3f}){t['next_value'][a][b]:>8.3f}")
                if b == 0:
                    line += f"{t['expected_return'][a]:>10.3f} ({t['expected_return_closed_form'][a]:.3f}){t['q_over_gamma'][a]:>14.3f}"
                print(line)
        print("  lambda_tn of the second-step transitions (outcome -> end): mean {:.3f} min {:.3f} max {:.3f}".format(*t["lambda_tn_step2"]))
