"""Team updates per second: the scripts' batched ensembles vs a naive per-agent loop.

    python benchmark/throughput.py                 # TD3+BC (matd3bc.py): 2 and 4 agents, (256, 256) MLPs, batch 100
    python benchmark/throughput.py --agents 2 4 8 --hidden 64 --batch-size 1024
    python benchmark/throughput.py --algo bcq --agents 2 3   # MABCQ (mabcq_continuous.py): (64, 64), batch 1024, HalfCheetah's sizes
    python benchmark/throughput.py --algo cql --agents 3     # MACQL (macql.py): (256, 256), batch 100, smax-3m's sizes
    python benchmark/throughput.py --algo cql --agents 8 --obs-dim 205 --act-dim 13   # smax-8m's sizes
    python benchmark/throughput.py --table11        # the paper's Table 11: MABCQ, BCQ, MATD3+BC, TD3+BC on HalfCheetah 2x3

Both paths run in this one process with the same torch settings and the same math. A team
update is one gradient step of every agent. The naive loop is written the way CORL's
`td3_bc.py` is: per agent one plain module per network (actor, critic_1, critic_2, ...) with
its own default Adam, a replay buffer of tensors indexed by numpy random indices, and soft
updates through `param.data.copy_`. The batched path calls the script's own functions.

- `--algo td3bc`: TD3+BC with lambda_vd and lambda_tn weights, twin critics, target smoothing,
  delayed actor (matd3bc.py). Defaults: the differential game (obs 2, act 1), (256, 256), batch 100.
- `--algo bcq`: MABCQ's default update (mabcq_continuous.py): n = 10 perturbed samples of G1 per
  next state for the soft clipped double-Q target, lambda_vd from the target critics, lambda_tn
  per transition, the perturbation model's weighted update, G1 frozen (Algorithm 1).
  Defaults: HalfCheetah 2x3 (obs 17, act 3 per agent), (64, 64), batch 1024 (ECAI Appendix B).
- `--algo cql`: MACQL's update (macql.py's `macql_loss`): masked CQL(H) (logsumexp over the available
  actions, target max over the available next actions), lambda_vd from the target network,
  lambda_tn * lambda_vd on both terms, Polyak target update. --act-dim is the number of actions.
  Defaults: smax-3m (obs 75, 8 actions), (256, 256), batch 100 (ECAI Appendix B on SMAC).

Prints one line per setting: batched and naive team updates/s, ms per team update, and
ratio=<batched/naive> of the best of each, paired=<the median of batched/naive over the repeats> (each repeat times
the two paths back to back, so a machine whose speed drifts, as a shared VM's does, moves both); for bcq first the
layout mabcq_continuous.py's products take at these sizes.
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
import mabcq_continuous  # noqa: E402
from envs import dataset as D  # noqa: E402
from envs import run as contract  # noqa: E402
import macql  # noqa: E402
import matd3bc  # noqa: E402

DATA_SIZE = 100_000
OBS_DIM, ACT_DIM = 2, 1  # set per algorithm (DEFAULTS) or by --obs-dim / --act-dim
ARGS = SimpleNamespace(policy_noise=0.2, noise_clip=0.5, gamma=0.99, tau=0.005, alpha=2.5, no_vd=False, epsilon=0.9, policy_freq=2)
BCQ = SimpleNamespace(gamma=0.99, tau=0.005, lmbda=0.75, phi=0.05, n_samples=10, latent=10, epsilon=0.8,
                      lr_q=1e-3, lr_xi=1e-4)  # mabcq_continuous.py's defaults
CLOCK = time.perf_counter  # --clock cpu: time.process_time, the CPU time this process got (one thread: not the waits for a core)
DEFAULTS = {"td3bc": dict(obs_dim=2, act_dim=1, hidden=256, batch_size=100),  # the differential game, MPE settings
            "bcq": dict(obs_dim=17, act_dim=3, hidden=64, batch_size=1024),  # HalfCheetah 2x3 (Table 11), MuJoCo settings
            "cql": dict(obs_dim=75, act_dim=8, hidden=256, batch_size=100)}  # smax-3m (8m: obs 205, 13 actions), SMAC settings
CQL = SimpleNamespace(gamma=0.99, tau=0.005, alpha=0.2, epsilon=0.99, lr=1e-4)  # macql.py's SMAC presets
BCQ_LAYOUT = ("layout (mabcq_continuous.py's VectorizedLinear picks it by size, no flag): the state's share of each "
              "first layer once per state, not once per sample; last layers of <= 8 outputs on >= 2**14 inputs per "
              "member: one product per member (1 output) or the weight transposed in memory (more); all others one "
              "batched product; the target pass 256 states (and their n samples) at a time "
              "(docs/mabcq_continuous.md, Throughput)")


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


def naive_twin_critic_update(agent, state, action, target_q, weight):
    """The weighted squared TD loss of both critics of one naive agent, and their optimiser steps."""
    current_q1, current_q2 = agent.critic_1(state, action).squeeze(1), agent.critic_2(state, action).squeeze(1)
    critic_loss = (weight * (current_q1 - target_q) ** 2).mean() + (weight * (current_q2 - target_q) ** 2).mean()
    agent.critic_1_optimizer.zero_grad()
    agent.critic_2_optimizer.zero_grad()
    critic_loss.backward()
    agent.critic_1_optimizer.step()
    agent.critic_2_optimizer.step()


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
        naive_twin_critic_update(self, state, action, target_q, weight)
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


def naive_updates_per_second(n_agents, hidden, batch_size, seconds, agent_class=None, dataset=None):
    """One agent object per agent (NaiveAgent: TD3+BC, NaiveBCQAgent: MABCQ, NaiveCQLAgent: MACQL), each on its
    own data, updated one after the other."""
    agents = [(agent_class or NaiveAgent)((dataset or random_dataset)(i), hidden, batch_size) for i in range(n_agents)]

    def step():
        for agent in agents:
            agent.train()

    return timed(step, seconds)


# ---- batched: matd3bc.py's ensemble and losses ----
def batched_updates_per_second(n_agents, hidden, batch_size, seconds, args=ARGS):
    gens = D.agent_generators(0, list(range(n_agents)), "cpu")
    data = {k: torch.stack([random_dataset(i)[k] for i in range(n_agents)]) for k in random_dataset(0)}
    sizes = [DATA_SIZE] * n_agents
    actor, critic = matd3bc.Actor(OBS_DIM, ACT_DIM, hidden, gens), matd3bc.TwinCritic(OBS_DIM, ACT_DIM, hidden, gens)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=3e-4, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=3e-4, fused=True)
    state = {"step": 0}

    def step():
        k = state["step"] % D.RNG_CHUNK
        if k == 0:
            state["idx"] = D.sample_indices(sizes, (D.RNG_CHUNK, batch_size), gens)
            state["noise"] = D.randn(gens, D.RNG_CHUNK, batch_size, ACT_DIM, device="cpu")
        state["step"] += 1
        idx = state["idx"][:, k]
        batch = {key: D.gather(value, idx) for key, value in data.items()}
        critic_loss, _, weight, _ = matd3bc.td3bc_critic_loss(critic, critic_target, actor_target, {**batch, "noise": state["noise"][:, k]}, args)
        critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        critic_optimizer.step()
        if state["step"] % args.policy_freq == 0:
            actor_loss = matd3bc.td3bc_actor_loss(actor, critic, batch, weight, args)
            actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            actor_optimizer.step()
            matd3bc.soft_update(critic_target, critic, args.tau)
            matd3bc.soft_update(actor_target, actor, args.tau)

    return timed(step, seconds)


# ---- MABCQ, naive: one learner object per agent, the same CORL style ----
def mlp(in_dim, out_dim, hidden):
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class NaiveVAE(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.encoder = mlp(OBS_DIM + ACT_DIM, 2 * BCQ.latent, hidden)
        self.decoder = mlp(OBS_DIM + BCQ.latent, ACT_DIM, hidden)

    def decode(self, state):
        z = torch.randn(state.shape[0], BCQ.latent).clamp(-0.5, 0.5)
        return torch.tanh(self.decoder(torch.cat([state, z], 1)))


class NaivePerturbation(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = mlp(OBS_DIM + ACT_DIM, ACT_DIM, hidden)

    def forward(self, state, action):
        return (action + BCQ.phi * torch.tanh(self.net(torch.cat([state, action], 1)))).clamp(-1, 1)


class NaiveBCQAgent:
    def __init__(self, data, hidden, batch_size):
        self.data, self.batch_size = data, batch_size
        self.vae = NaiveVAE(hidden)  # fitted before Q-learning and frozen: no optimiser here
        self.actor = NaivePerturbation(hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=BCQ.lr_xi)
        self.critic_1, self.critic_2 = NaiveCritic(hidden), NaiveCritic(hidden)
        self.critic_1_target, self.critic_2_target = copy.deepcopy(self.critic_1), copy.deepcopy(self.critic_2)
        self.critic_1_optimizer = torch.optim.Adam(self.critic_1.parameters(), lr=BCQ.lr_q)
        self.critic_2_optimizer = torch.optim.Adam(self.critic_2.parameters(), lr=BCQ.lr_q)

    def sample(self):
        indices = np.random.randint(0, DATA_SIZE, size=self.batch_size)
        return [self.data[k][indices] for k in ("obs", "actions", "rewards", "next_obs", "dones", "lambda_tn")]

    def soft_clipped(self, state, action, critics):
        q1, q2 = (c(state, action).squeeze(1) for c in critics)
        return BCQ.lmbda * torch.min(q1, q2) + (1 - BCQ.lmbda) * torch.max(q1, q2)

    def train(self):
        state, action, reward, next_state, done, lambda_tn = self.sample()
        targets = (self.critic_1_target, self.critic_2_target)
        with torch.no_grad():
            repeated = torch.repeat_interleave(next_state, BCQ.n_samples, 0)
            next_value = self.soft_clipped(repeated, self.actor_target(repeated, self.vae.decode(repeated)), targets)
            next_value = next_value.reshape(self.batch_size, -1).max(1)[0]
            target_q = reward + BCQ.gamma * (~done) * next_value
            q_sa = self.soft_clipped(state, action, targets)
            weight = lambda_tn * mabcq_continuous.value_deviation(next_value, q_sa, reward, done, BCQ.gamma, BCQ.epsilon)
        naive_twin_critic_update(self, state, action, target_q, weight)
        with torch.no_grad():
            sampled = self.vae.decode(state)
        actor_loss = -(weight * self.critic_1(state, self.actor(state, sampled)).squeeze(1)).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        naive_soft_update(self.critic_1_target, self.critic_1, BCQ.tau)
        naive_soft_update(self.critic_2_target, self.critic_2, BCQ.tau)
        naive_soft_update(self.actor_target, self.actor, BCQ.tau)


# ---- MABCQ, batched: mabcq_continuous.py's ensemble and losses, as its training loop calls them ----
def batched_bcq_updates_per_second(n_agents, hidden, batch_size, seconds, use_vd=True):
    M = mabcq_continuous
    gens = D.agent_generators(0, list(range(n_agents)), "cpu")
    data = {k: torch.stack([random_dataset(i)[k] for i in range(n_agents)]) for k in random_dataset(0)}
    sizes = [DATA_SIZE] * n_agents
    g1 = M.ConditionalVAE(OBS_DIM, ACT_DIM, BCQ.latent, (hidden,), gens)
    critic, xi = M.Critics(OBS_DIM, ACT_DIM, (hidden,), gens), M.Perturbation(OBS_DIM, ACT_DIM, (hidden,), BCQ.phi, gens)
    critic_target, xi_target = copy.deepcopy(critic), copy.deepcopy(xi)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=BCQ.lr_q, fused=True)
    xi_optimizer = torch.optim.Adam(xi.parameters(), lr=BCQ.lr_xi, fused=True)
    state = {"step": 0}

    def step():
        k = state["step"] % D.RNG_CHUNK
        if k == 0:
            state["idx"] = D.sample_indices(sizes, (D.RNG_CHUNK, batch_size), gens)
        state["step"] += 1
        batch = {key: D.gather(value, state["idx"][:, k]) for key, value in data.items()}
        noise = D.randn(gens, batch_size * (BCQ.n_samples + 1), BCQ.latent, device="cpu")
        target_noise, xi_noise = noise.split([batch_size * BCQ.n_samples, batch_size], 1)
        critic_loss, _, weight, _ = M.bcq_critic_loss(critic, critic_target, xi_target, g1, batch, target_noise,
                                                      SimpleNamespace(**vars(BCQ), no_vd=not use_vd, vd_terminal="one"))
        critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        critic_optimizer.step()
        xi_loss = M.bcq_perturbation_loss(xi, critic, g1, batch["obs"], xi_noise, weight)
        xi_optimizer.zero_grad(set_to_none=True)
        xi_loss.sum().backward()
        xi_optimizer.step()
        M.soft_update(critic_target, critic, BCQ.tau)
        M.soft_update(xi_target, xi, BCQ.tau)

    return timed(step, seconds)


# ---- MACQL: discrete actions with masks; ACT_DIM is the number of actions ----
def random_discrete_dataset(seed):
    """One agent's data: random observations and masks (action 0 always legal), actions legal under their mask."""
    g = torch.Generator().manual_seed(seed)
    avail = torch.rand(DATA_SIZE, ACT_DIM, generator=g) > 0.5
    next_avail = torch.rand(DATA_SIZE, ACT_DIM, generator=g) > 0.5
    avail[:, 0] = next_avail[:, 0] = True
    return dict(obs=torch.randn(DATA_SIZE, OBS_DIM, generator=g), next_obs=torch.randn(DATA_SIZE, OBS_DIM, generator=g),
                actions=torch.multinomial(avail.float(), 1, generator=g).squeeze(1), rewards=torch.randn(DATA_SIZE, generator=g),
                dones=torch.rand(DATA_SIZE, generator=g) < 0.01, avail_actions=avail, next_avail_actions=next_avail,
                lambda_tn=torch.rand(DATA_SIZE, generator=g) + 0.5)


class NaiveCQLAgent:
    """One agent's Q-network, target copy and default Adam, numpy indices, `param.data.copy_` soft updates."""

    def __init__(self, data, hidden, batch_size):
        self.data, self.batch_size = data, batch_size
        self.q = nn.Sequential(nn.Linear(OBS_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, ACT_DIM))
        self.target = copy.deepcopy(self.q)
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=CQL.lr)

    def train(self):
        b = {k: v[np.random.randint(0, DATA_SIZE, size=self.batch_size)] for k, v in self.data.items()}
        with torch.no_grad():
            target_next, target_obs = self.target(torch.cat([b["next_obs"], b["obs"]])).split(self.batch_size)
            next_value = target_next.masked_fill(~b["next_avail_actions"], -torch.inf).max(1).values
            q_sa_target = target_obs.gather(1, b["actions"][:, None]).squeeze(1)
            y = b["rewards"] + CQL.gamma * (~b["dones"]) * next_value
            weight = b["lambda_tn"] * macql.value_deviation(next_value, q_sa_target, b["rewards"], b["dones"], CQL.gamma, CQL.epsilon)
        q = self.q(b["obs"])
        q_sa = q.gather(1, b["actions"][:, None]).squeeze(1)
        gap = torch.logsumexp(q.masked_fill(~b["avail_actions"], -torch.inf), 1) - q_sa
        loss = (weight * (q_sa - y) ** 2).mean() / 2 + CQL.alpha * (weight * gap).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        naive_soft_update(self.target, self.q, CQL.tau)


def batched_cql_updates_per_second(n_agents, hidden, batch_size, seconds):
    """macql.py's ensemble, `macql_loss`, fused Adam and index streams, as its training loop calls them."""
    generators = D.agent_generators(0, list(range(n_agents)), "cpu")
    parts = [random_discrete_dataset(i) for i in range(n_agents)]
    data = {k: torch.stack([part[k] for part in parts]) for k in parts[0]}  # [n_agents, DATA_SIZE, ...]
    qnet = macql.QNetwork(OBS_DIM, ACT_DIM, hidden, generators)
    qnet_target = copy.deepcopy(qnet)
    optimizer = torch.optim.Adam(qnet.parameters(), lr=CQL.lr, fused=True)
    state = {"step": 0}

    def step():
        k = state["step"] % D.RNG_CHUNK
        if k == 0:
            state["idx"] = D.sample_indices([DATA_SIZE] * n_agents, (D.RNG_CHUNK, batch_size), generators)
        state["step"] += 1
        batch = {key: D.gather(value, state["idx"][:, k]) for key, value in data.items()}
        loss, _ = macql.macql_loss(qnet, qnet_target, batch, CQL.gamma, CQL.epsilon, CQL.alpha, use_vd=True, weight_cql_term=True)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        macql.soft_update(qnet_target, qnet, CQL.tau)

    return timed(step, seconds)


MEASURE = {"td3bc": (batched_updates_per_second, naive_updates_per_second),
           "bcq": (batched_bcq_updates_per_second, lambda *a: naive_updates_per_second(*a, agent_class=NaiveBCQAgent)),
           "cql": (batched_cql_updates_per_second,
                   lambda *a: naive_updates_per_second(*a, agent_class=NaiveCQLAgent, dataset=random_discrete_dataset))}


def table11(seconds, repeats):
    """Table 11 of the paper: ms per update on HalfCheetah 2x3 (2 agents, obs 17, act 3 each) of each method and its
    unweighted baseline, the scripts' own batched updates at their MuJoCo settings: BCQ (64, 64), batch 1024;
    TD3+BC (256, 256), batch 256. The weighted update adds lambda_vd's forward pass of the target critics; lambda_tn
    is computed once per transition before training, so within an update it is one multiplication in both."""
    global OBS_DIM, ACT_DIM
    OBS_DIM, ACT_DIM = 17, 3
    settings = {"MABCQ": lambda: batched_bcq_updates_per_second(2, 64, 1024, seconds, use_vd=True),
                "BCQ": lambda: batched_bcq_updates_per_second(2, 64, 1024, seconds, use_vd=False),
                "MATD3+BC": lambda: batched_updates_per_second(2, 256, 256, seconds),
                "TD3+BC": lambda: batched_updates_per_second(2, 256, 256, seconds, SimpleNamespace(**{**vars(ARGS), "no_vd": True}))}
    best = {name: 0.0 for name in settings}
    for _ in range(repeats):  # alternating, so a change in the machine's load hits every method alike
        for name, measure in settings.items():
            best[name] = max(best[name], measure())
    paper = {"MABCQ": 18, "BCQ": 10, "MATD3+BC": 4, "TD3+BC": 3}
    print("| | " + " | ".join(settings) + " |\n|---|" + "---|" * len(settings))
    print("| ms per team update (2 agents), here | " + " | ".join(f"{1000 / best[n]:.1f}" for n in settings) + " |")
    print("| ms per update, paper (i7-8700 + GTX 1080 Ti) | " + " | ".join(str(paper[n]) for n in settings) + " |")


def timed(step, seconds):
    for _ in range(50):  # warm-up
        step()
    n, start = 0, CLOCK()
    while CLOCK() - start < seconds:
        for _ in range(20):
            step()
        n += 20
    return n / (CLOCK() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", nargs="+", choices=list(MEASURE), default=["td3bc"], help="td3bc (matd3bc.py), bcq (mabcq_continuous.py), cql (macql.py)")
    parser.add_argument("--agents", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--hidden", type=int, default=None, help="width of the (hidden, hidden) MLPs (default per --algo: 256, 64, 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="per agent (default per --algo: 100, 1024, 100)")
    parser.add_argument("--obs-dim", type=int, default=None, help="default per --algo: 2 (dg), 17 (HalfCheetah), 75 (smax-3m)")
    parser.add_argument("--act-dim", type=int, default=None, help="per agent, the number of actions for cql; default per --algo: 1 (dg), 3 (HalfCheetah 2x3), 8 (smax-3m)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements: the best of each, and the median of their ratios")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, robust on a shared machine (with one thread)")
    parser.add_argument("--table11", action="store_true", help="the paper's Table 11 instead: ms per update of MABCQ, BCQ, "
                        "MATD3+BC and TD3+BC on HalfCheetah 2x3, the scripts' batched updates (--seconds, --repeats, --clock apply)")
    args = parser.parse_args()
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_flush_denormal(True)  # as the scripts do; applies to both paths
    contract.keep_freed_memory()  # as mabcq_continuous.py does at start; applies to every path
    if args.table11:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
        table11(args.seconds, args.repeats)
        sys.exit(0)
    for algo in args.algo:
        setting = {k: DEFAULTS[algo][k] if getattr(args, k) is None else getattr(args, k) for k in DEFAULTS[algo]}
        OBS_DIM, ACT_DIM = setting["obs_dim"], setting["act_dim"]
        hidden, batch_size = setting["hidden"], setting["batch_size"]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, {algo}, obs {OBS_DIM}, act {ACT_DIM}")
        if algo == "bcq":
            print(BCQ_LAYOUT)
        for n_agents in args.agents:
            batched, naive = [], []
            for _ in range(args.repeats):
                batched.append(MEASURE[algo][0](n_agents, hidden, batch_size, args.seconds))
                naive.append(MEASURE[algo][1](n_agents, hidden, batch_size, args.seconds))
            b, n = max(batched), max(naive)
            paired = float(np.median([x / y for x, y in zip(batched, naive)]))  # robust to the machine's speed drifting
            print(f"agents={n_agents} algo={algo} hidden=({hidden},{hidden}) batch={batch_size} "
                  f"batched={b:.1f}/s ({1000 / b:.1f} ms) naive={n:.1f}/s ({1000 / n:.1f} ms) ratio={b / n:.2f} "
                  f"paired={paired:.2f}", flush=True)
