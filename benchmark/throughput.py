"""Team updates per second: matd3bc.py's batched ensemble vs a naive per-agent loop.

    python benchmark/throughput.py                 # 2 and 4 agents, (256, 256) MLPs, batch 100
    python benchmark/throughput.py --agents 2 4 8 --hidden 64 --batch-size 1024

Both run in this one process with the same torch settings and the same math (TD3+BC with
lambda_vd and lambda_tn weights, twin critics, target smoothing, delayed actor). A team
update is one gradient step of every agent. The naive loop is written the way CORL's
`td3_bc.py` is: per agent one module per network (actor, critic_1, critic_2) with its own
default Adam, a replay buffer of tensors indexed by numpy random indices, and soft updates
through `param.data.copy_`. The batched path calls matd3bc.py's own functions.
Prints one line per setting: batched and naive team updates/s and ratio=<batched/naive>.
"""

import argparse
import copy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import matd3bc  # noqa: E402

DATA_SIZE = 100_000
OBS_DIM, ACT_DIM = 2, 1  # the differential game with full observation; set by --obs-dim / --act-dim
ARGS = SimpleNamespace(policy_noise=0.2, noise_clip=0.5, gamma=0.99, tau=0.005, alpha=2.5, no_vd=False, epsilon=0.9, policy_freq=2)


def random_dataset(seed):
    g = torch.Generator().manual_seed(seed)
    return dict(
        obs=torch.randn(DATA_SIZE, OBS_DIM, generator=g),
        actions=torch.rand(DATA_SIZE, ACT_DIM, generator=g) * 2 - 1,
        rewards=torch.randn(DATA_SIZE, generator=g),
        next_obs=torch.randn(DATA_SIZE, OBS_DIM, generator=g),
        dones=torch.rand(DATA_SIZE, generator=g) < 0.01,
        lambda_tn=torch.rand(DATA_SIZE, generator=g) + 0.5,
    )


# ---- naive: one learner object per agent, CORL td3_bc.py style ----
class NaiveActor(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(OBS_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, ACT_DIM), nn.Tanh())

    def forward(self, state):
        return self.net(state)


class NaiveCritic(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(OBS_DIM + ACT_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, state, action):
        return self.net(torch.cat([state, action], 1))


def naive_soft_update(target, source, tau):
    for target_param, source_param in zip(target.parameters(), source.parameters()):
        target_param.data.copy_((1 - tau) * target_param.data + tau * source_param.data)


class NaiveAgent:
    def __init__(self, data, hidden, batch_size):
        self.data, self.batch_size = data, batch_size
        self.actor = NaiveActor(hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.critic_1, self.critic_2 = NaiveCritic(hidden), NaiveCritic(hidden)
        self.critic_1_target, self.critic_2_target = copy.deepcopy(self.critic_1), copy.deepcopy(self.critic_2)
        self.critic_1_optimizer = torch.optim.Adam(self.critic_1.parameters(), lr=3e-4)
        self.critic_2_optimizer = torch.optim.Adam(self.critic_2.parameters(), lr=3e-4)
        self.total_it = 0

    def sample(self):
        indices = np.random.randint(0, DATA_SIZE, size=self.batch_size)
        return [self.data[k][indices] for k in ("obs", "actions", "rewards", "next_obs", "dones", "lambda_tn")]

    def train(self):
        self.total_it += 1
        state, action, reward, next_state, done, lambda_tn = self.sample()
        with torch.no_grad():
            noise = (torch.randn_like(action) * ARGS.policy_noise).clamp(-ARGS.noise_clip, ARGS.noise_clip)
            next_action = (self.actor_target(next_state) + noise).clamp(-1, 1)
            next_value = torch.min(self.critic_1_target(next_state, next_action), self.critic_2_target(next_state, next_action)).squeeze(1)
            target_q = reward + ARGS.gamma * (~done) * next_value
            q_sa = torch.min(self.critic_1_target(state, action), self.critic_2_target(state, action)).squeeze(1)
            weight = lambda_tn * matd3bc.value_deviation(next_value, q_sa, reward, done, ARGS.gamma, ARGS.epsilon)
        current_q1, current_q2 = self.critic_1(state, action).squeeze(1), self.critic_2(state, action).squeeze(1)
        critic_loss = (weight * (current_q1 - target_q) ** 2).mean() + (weight * (current_q2 - target_q) ** 2).mean()
        self.critic_1_optimizer.zero_grad()
        self.critic_2_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()
        if self.total_it % ARGS.policy_freq == 0:
            pi = self.actor(state)
            q = self.critic_1(state, pi).squeeze(1)
            lmbda = ARGS.alpha / q.abs().mean().detach()
            actor_loss = (weight * (-lmbda * q + F.mse_loss(pi, action, reduction="none").mean(1))).mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            naive_soft_update(self.critic_1_target, self.critic_1, ARGS.tau)
            naive_soft_update(self.critic_2_target, self.critic_2, ARGS.tau)
            naive_soft_update(self.actor_target, self.actor, ARGS.tau)


def naive_updates_per_second(n_agents, hidden, batch_size, seconds):
    agents = [NaiveAgent(random_dataset(i), hidden, batch_size) for i in range(n_agents)]

    def step():
        for agent in agents:
            agent.train()

    return timed(step, seconds)


# ---- batched: matd3bc.py's ensemble and losses ----
def batched_updates_per_second(n_agents, hidden, batch_size, seconds):
    gens = matd3bc.agent_generators(0, list(range(n_agents)), "cpu")
    data = {k: torch.stack([random_dataset(i)[k] for i in range(n_agents)]) for k in random_dataset(0)}
    sizes = [DATA_SIZE] * n_agents
    actor, critic = matd3bc.Actor(OBS_DIM, ACT_DIM, hidden, gens), matd3bc.TwinCritic(OBS_DIM, ACT_DIM, hidden, gens)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=3e-4, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=3e-4, fused=True)
    state = {"step": 0}

    def step():
        k = state["step"] % matd3bc.RNG_CHUNK
        if k == 0:
            state["idx"] = matd3bc.sample_indices(sizes, (matd3bc.RNG_CHUNK, batch_size), gens)
            state["noise"] = matd3bc.randn(gens, matd3bc.RNG_CHUNK, batch_size, ACT_DIM, device="cpu")
        state["step"] += 1
        idx = state["idx"][:, k]
        batch = {key: matd3bc.gather(value, idx) for key, value in data.items()}
        critic_loss, _, weight, _ = matd3bc.td3bc_critic_loss(critic, critic_target, actor_target, batch, state["noise"][:, k], ARGS)
        critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        critic_optimizer.step()
        if state["step"] % ARGS.policy_freq == 0:
            actor_loss = matd3bc.td3bc_actor_loss(actor, critic, batch, weight, ARGS)
            actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            actor_optimizer.step()
            matd3bc.soft_update(critic_target, critic, ARGS.tau)
            matd3bc.soft_update(actor_target, actor, ARGS.tau)

    return timed(step, seconds)


def timed(step, seconds):
    for _ in range(50):  # warm-up
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            step()
        n += 20
    return n / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--obs-dim", type=int, default=OBS_DIM)
    parser.add_argument("--act-dim", type=int, default=ACT_DIM)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements; the best of each is reported")
    args = parser.parse_args()
    OBS_DIM, ACT_DIM = args.obs_dim, args.act_dim
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_flush_denormal(True)  # as matd3bc.py does; applies to both paths
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, obs {OBS_DIM}, act {ACT_DIM}")
    for n_agents in args.agents:
        batched, naive = [], []
        for _ in range(args.repeats):
            batched.append(batched_updates_per_second(n_agents, args.hidden, args.batch_size, args.seconds))
            naive.append(naive_updates_per_second(n_agents, args.hidden, args.batch_size, args.seconds))
        print(f"agents={n_agents} hidden=({args.hidden},{args.hidden}) batch={args.batch_size} "
              f"batched={max(batched):.1f}/s naive={max(naive):.1f}/s ratio={max(batched) / max(naive):.2f}", flush=True)
