# docs and experiment results: docs/mabcq_discrete.md
"""MABCQ (discrete): discrete BCQ (Fujimoto et al., 2019, "Benchmarking Batch Deep RL
Algorithms") with the value deviation and transition normalisation weights of "Offline
Decentralized Multi-Agent Reinforcement Learning" (Jiang & Lu, ECAI 2023, arXiv 2108.01832).

Every agent i is an independent offline learner on its own dataset B_i of
(o_i, a_i, r, o'_i, done, avail masks): its own Q-network, behaviour classifier, VAEs and
optimiser state; no parameter sharing, no communication. All N learners are stored as one
batched ensemble (a leading agent dimension on every weight), mathematically N separate
learners. Agents with fewer actions than others have their extra actions masked out.

    python mabcq_discrete.py --env-id matrix-game --tn-estimator count   # MABCQ, Table 4
    python mabcq_discrete.py --env-id matrix-game --no-tn                # BCQ w/ lambda_vd, Table 3
    python mabcq_discrete.py --env-id matrix-game --no-vd --no-tn        # BCQ, Table 2
"""

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import envs
from envs import InputError
from envs import dataset as datasets


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (agent i draws everything from the stream [seed, i])"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled, train on CUDA when it is available"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "offline-decentralized-marl"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """whether to save one checkpoint per agent into `runs/{run_name}`"""

    # Algorithm specific arguments
    env_id: str = "matrix-game"
    """the environment id (see `envs.REGISTRY`); discrete-action envs only"""
    payoff: str | None = None
    """matrix-game only: payoff matrix, rows = agent 0's actions (None: Table 1, `1,5;6,1`)"""
    behavior: str | None = None
    """matrix-game only: behaviour policies, one row per agent (None: `0.8,0.2;0.4,0.6`)"""
    n_episodes: int | None = None
    """episodes per agent in the dataset (None: the env's recipe default, 1e5 for matrix-game)"""
    dataset_dir: str = datasets.default_dataset_dir()
    """root folder of the datasets (built there if absent; env var ODMARL_DATASET_DIR)"""
    agent_ids: str | None = None
    """comma-separated agents to train, e.g. `0`; only their dataset files are read (None: all)"""
    checkpoints: tuple[str, ...] = ()
    """evaluate a team assembled from these per-agent checkpoints (one per agent, in order) and exit"""
    total_steps: int = 30_000
    """gradient steps per agent"""
    eval_freq: int = 5_000
    """evaluate the team every this many steps"""
    eval_episodes: int = 10
    """evaluation episodes per evaluation (run side by side)"""
    batch_size: int = 100
    """the batch size of each agent"""
    learning_rate: float = 1e-4
    """the learning rate of the Q-network and the behaviour classifier"""
    hidden_dim: int = 256
    """the width of the (hidden, hidden) MLPs"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target network update: lerp towards the online network by tau (1 = copy)"""
    target_update_freq: int = 1
    """update the target network every this many steps (discrete BCQ: 1 with tau 0.005, or 8000 with tau 1 on Atari)"""
    threshold: float | None = None
    """BCQ filter: a is allowed if pi_b(a|s) / max_a' pi_b(a'|s) > threshold (None: 0.6, 0.1 on matrix-game)"""
    epsilon: float = 0.99
    """optimism level: lambda_vd is clipped to [1 - epsilon, 1 + epsilon]"""
    no_vd: bool = False
    """switch off the value deviation weight lambda_vd"""
    no_tn: bool = False
    """switch off the transition normalisation weight lambda_tn"""
    tn_estimator: Literal["vae", "count"] = "vae"
    """lambda_tn from the paper's two conditional VAEs, or exact 1 / P(s'|s, a) from dataset counts (small discrete state spaces)"""
    vae_steps: int = 5_000
    """gradient steps of the two conditional VAEs that give lambda_tn (fitted first, then frozen)"""
    vae_batch_size: int = 256
    """the batch size of the VAE fits"""
    vae_learning_rate: float = 1e-3
    """the learning rate of the VAE fits"""
    vae_latent_dim: int = 10
    """the latent size of both VAEs (the paper's "VAE hidden space")"""


# per-env defaults of flags left unset: on the matrix game agent 0's a2 has behaviour probability
# 0.2 = 0.25 x 0.8, so the paper's SMAC threshold 0.6 would forbid the optimal joint action (a2, a1)
PRESETS = {"matrix-game": dict(threshold=0.1)}
DEFAULT_THRESHOLD = 0.6
IMITATION_LOGIT_PENALTY = 1e-2  # discrete BCQ's 1e-2 * logits^2 on the classifier


def agent_generators(seed: int, agent_ids: list[int], device) -> list[torch.Generator]:
    """One random stream per agent, seeded by (seed, agent id): what agent i draws never
    depends on which other agents train in the same process."""
    return [
        torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        for i in agent_ids
    ]


def randn(generators, *shape, device) -> torch.Tensor:  # [n_agents, *shape]
    return torch.stack([torch.randn(*shape, generator=g, device=device) for g in generators])


# ALGO LOGIC: the networks, one member per agent (or per agent and head)
class VectorizedLinear(nn.Module):
    """Independent linear layers, one per ensemble member: weight [members, in, out], input [members, batch, in].

    `twins` members per agent are stored twin-major (member k * n_agents + i)."""

    def __init__(self, in_features, out_features, generators, twins=1, device=None):
        super().__init__()
        bound = 1 / np.sqrt(in_features)  # nn.Linear's default init, drawn from each agent's own stream
        weights, biases = [], []
        for _ in range(twins):
            for g in generators:
                weights.append((torch.rand(in_features, out_features, generator=g, device=device) * 2 - 1) * bound)
                biases.append((torch.rand(1, out_features, generator=g, device=device) * 2 - 1) * bound)
        self.weight = nn.Parameter(torch.stack(weights))
        self.bias = nn.Parameter(torch.stack(biases))

    def forward(self, x, members=None):
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])


class MLP(nn.Module):
    """(hidden, hidden) ReLU MLP of VectorizedLinear layers; `members` picks a slice of the ensemble."""

    def __init__(self, in_dim, out_dim, hidden_dim, generators, twins=1, device=None):
        super().__init__()
        self.layers = nn.ModuleList([
            VectorizedLinear(in_dim, hidden_dim, generators, twins, device),
            VectorizedLinear(hidden_dim, hidden_dim, generators, twins, device),
            VectorizedLinear(hidden_dim, out_dim, generators, twins, device),
        ])

    def forward(self, x, members=None):
        for layer in self.layers[:-1]:
            x = torch.relu_(layer(x, members))
        return self.layers[-1](x, members)


class QNetwork(nn.Module):
    """discrete BCQ's network: Q-values and a behaviour classifier (imitation logits), two separate
    MLPs like its FC_Q, stored as 2N members: every agent's Q head, then every agent's classifier."""

    def __init__(self, obs_dim, n_actions, hidden_dim, generators, device=None):
        super().__init__()
        self.net = MLP(obs_dim, n_actions, hidden_dim, generators, twins=2, device=device)

    def forward(self, obs):  # [n_agents, batch, obs_dim] -> q, logits [n_agents, batch, n_actions]
        return self.net(obs.repeat(2, 1, 1)).split(obs.shape[0], 0)

    def q(self, obs):  # the Q head only
        return self.net(obs, slice(0, obs.shape[0]))


def allowed_actions(logits, avail, threshold):
    """discrete BCQ's filter: a passes if pi_b(a|s) / max_a' pi_b(a'|s) > threshold, and a is available."""
    avail = avail | ~avail.any(-1, keepdim=True)  # a row without legal actions (after a terminal) is never used
    logits = logits.masked_fill(~avail, -torch.inf)
    ratio = (logits - logits.max(-1, keepdim=True).values).exp()  # pi_b(a|s) / max pi_b, in [0, 1]
    return (ratio > threshold) & avail


def greedy_action(q, allowed):  # argmax of Q over the allowed actions, [n_agents, batch]
    return q.masked_fill(~allowed, -torch.inf).argmax(-1)


def take(values, actions):  # values [n_agents, batch, n_actions], actions [n_agents, batch] -> [n_agents, batch]
    return values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def targets(qnet, qnet_target, obs, actions, next_obs, next_avail, threshold):
    """V'(s') and Q^(s, a), both from the target network. As in discrete BCQ (double DQN), the
    next action is the online Q's best among those passing the online classifier's filter and
    the mask; lambda_vd uses the same V'(s') as the TD target."""
    q_next, logits_next = qnet(next_obs)
    next_action = greedy_action(q_next, allowed_actions(logits_next, next_avail, threshold))
    target_q = qnet_target.q(torch.cat([next_obs, obs], 1))  # one target pass over s' and s
    target_next, target_obs = target_q.split(obs.shape[1], 1)
    return take(target_next, next_action), take(target_obs, actions)


def value_deviation(next_value, q_sa, rewards, dones, gamma, epsilon):
    """lambda_vd = clip(1 + (V'(s') - E[V(s')]) / |E[V(s')]|, 1 - eps, 1 + eps), from target networks.

    E[V(s')] is estimated from the sample as (Q(s, a) - r) / gamma. A terminal transition
    has no next-state value to be optimistic about: its weight is 1.
    """
    expected = (q_sa - rewards) / gamma
    lambda_vd = 1 + (next_value - expected) / (expected.abs() + 1e-6)
    lambda_vd = lambda_vd.clamp(1 - epsilon, 1 + epsilon)
    return torch.where(dones, torch.ones_like(lambda_vd), lambda_vd)


def count_lambda_tn(obs, actions, next_obs):
    """Exact lambda_tn = 1 / P^(s'|s, a) = N(s, a) / N(s, a, s') over identical (obs, action, next obs)
    tuples of one agent's data. Meant for small discrete state spaces: where every tuple is unique it is 1."""
    sa = np.concatenate([obs, actions.reshape(-1, 1).astype(obs.dtype)], 1)
    sa_id = np.unique(sa, axis=0, return_inverse=True)[1].reshape(-1)
    sas_id = np.unique(np.concatenate([sa, next_obs], 1), axis=0, return_inverse=True)[1].reshape(-1)
    return (np.bincount(sa_id)[sa_id] / np.bincount(sas_id)[sas_id]).astype(np.float32)


class ConditionalVAE(nn.Module):
    """E(mu, sigma | cond, a) and D(a | cond, z) over one-hot actions, one per agent; cond is s (G1) or (s, s') (G2)."""

    def __init__(self, cond_dim, n_actions, latent_dim, hidden_dim, generators, device=None):
        super().__init__()
        self.encoder = MLP(cond_dim + n_actions, 2 * latent_dim, hidden_dim, generators, device=device)
        self.decoder = MLP(cond_dim + latent_dim, n_actions, hidden_dim, generators, device=device)
        self.latent_dim = latent_dim

    def encode(self, cond, onehot):
        mean, log_std = self.encoder(torch.cat([cond, onehot], -1)).split(self.latent_dim, -1)
        return mean, log_std.clamp(-4, 15)

    def loss(self, cond, actions, onehot, noise):  # per-agent loss [n_agents]
        mean, log_std = self.encode(cond, onehot)
        logits = self.decoder(torch.cat([cond, mean + log_std.exp() * noise], -1))
        recon_loss = -take(F.log_softmax(logits, -1), actions).mean(-1)  # cross-entropy of the action
        kl = -0.5 * (1 + 2 * log_std - mean**2 - (2 * log_std).exp()).mean((1, 2))
        return recon_loss + 0.5 * kl


def transition_normalization(g1_mean, g2_mean):
    """lambda_tn = rho_N(0,I)(mu1) / rho_N(0,I)(mu2) = exp((|mu2|^2 - |mu1|^2) / 2), ~ 1 / P_B(s'|s, a_i)."""
    return torch.exp(((g2_mean**2).sum(-1) - (g1_mean**2).sum(-1)) / 2)


def fit_lambda_tn(data, args, generators, device, progress=True):
    """Fit G1(a|s) and G2(a|s, s') on each agent's own data, then compute lambda_tn once
    for every transition (the VAEs are frozen afterwards). Returns [n_agents, T] and the logs."""
    obs_dim, n_actions = data["obs"].shape[-1], data["avail_actions"].shape[-1]
    g1 = ConditionalVAE(obs_dim, n_actions, args.vae_latent_dim, args.hidden_dim, generators, device)
    g2 = ConditionalVAE(2 * obs_dim, n_actions, args.vae_latent_dim, args.hidden_dim, generators, device)
    optimizer = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=args.vae_learning_rate, fused=True)
    logs = {}
    for _ in tqdm(range(args.vae_steps), desc="fitting VAEs for lambda_tn", disable=not progress):
        idx = sample_indices(data["size"], (args.vae_batch_size,), generators)
        obs, actions, next_obs = gather(data["obs"], idx), gather(data["actions"], idx), gather(data["next_obs"], idx)
        onehot = F.one_hot(actions, n_actions).float()
        noise = randn(generators, 2, args.vae_batch_size, args.vae_latent_dim, device=device)
        loss_g1 = g1.loss(obs, actions, onehot, noise[:, 0])
        loss_g2 = g2.loss(torch.cat([obs, next_obs], -1), actions, onehot, noise[:, 1])
        optimizer.zero_grad(set_to_none=True)
        (loss_g1 + loss_g2).sum().backward()
        optimizer.step()
        logs = {"vae/g1_loss": loss_g1.mean().item(), "vae/g2_loss": loss_g2.mean().item()}
    lambda_tn = torch.empty(data["obs"].shape[:2], device=device)
    mu_sq = torch.zeros(2, device=device)  # sum of |mu1|^2 and |mu2|^2: which encoder carries the information
    with torch.no_grad():
        for start in range(0, lambda_tn.shape[1], 65536):
            s = slice(start, start + 65536)
            obs, next_obs = data["obs"][:, s], data["next_obs"][:, s]
            onehot = F.one_hot(data["actions"][:, s], n_actions).float()
            mu1, _ = g1.encode(obs, onehot)
            mu2, _ = g2.encode(torch.cat([obs, next_obs], -1), onehot)
            lambda_tn[:, s] = transition_normalization(mu1, mu2)
            mu_sq += torch.stack([(mu1**2).sum(), (mu2**2).sum()])
    logs.update({"vae/mu1_sq_norm": mu_sq[0].item() / lambda_tn.numel(), "vae/mu2_sq_norm": mu_sq[1].item() / lambda_tn.numel()})
    return lambda_tn, logs


# TRY NOT TO MODIFY: per-agent data on the device, sampled with each agent's own stream
RNG_CHUNK = 1000


def sample_indices(sizes, shape, generators):  # [n_agents, *shape], agent i's from [0, sizes[i])
    return torch.stack([torch.randint(int(s), shape, generator=g, device=g.device) for s, g in zip(sizes, generators)])


def gather(array, idx):  # array [n_agents, T, *], idx [n_agents, batch] -> [n_agents, batch, *]
    return array[torch.arange(array.shape[0], device=array.device)[:, None], idx]


def pad_masks(masks, n_actions):  # per-agent [*, n_i] -> [*, n_actions]; padded actions are never available
    return np.stack([np.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, n_actions - m.shape[-1])]) for m in masks])


def stack_agent_data(agent_data: list[dict], n_actions: int, device):
    """Stack the agents' arrays along a leading agent dimension, padding to the longest dataset;
    every agent samples only its own first `size` rows."""
    if len({d["obs"].shape[1] for d in agent_data}) > 1:
        raise InputError("the batched ensemble needs equal observation sizes across agents")
    size = max(len(d["rewards"]) for d in agent_data)
    out = {"size": [len(d["rewards"]) for d in agent_data]}
    for key in ("obs", "actions", "rewards", "next_obs", "dones", "avail_actions", "next_avail_actions"):
        arrays = [d[key] for d in agent_data]
        if key.endswith("avail_actions"):
            arrays = list(pad_masks(arrays, n_actions)) if len({a.shape[1] for a in arrays}) > 1 else arrays
        padded = [np.concatenate([a, np.repeat(a[-1:], size - len(a), 0)]) for a in arrays]
        out[key] = torch.as_tensor(np.stack(padded), device=device)
    return out


def soft_update(target, source, tau):
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def agent_state(module, index, n_agents):
    """Agent `index`'s members of an ensemble module (members i, i + n, ...) as a plain state dict."""
    return {k: v[index::n_agents].clone().cpu() for k, v in module.state_dict().items()}


def load_agent_state(module, index, n_agents, state):
    with torch.no_grad():
        for k, v in module.state_dict().items():
            v[index::n_agents] = state[k]


@torch.no_grad()
def evaluate(env, qnet, threshold, n_episodes, gamma, seed, device):
    """Run the team's greedy policies (argmax of Q over the actions passing the filter and the mask).

    Returns the team return (undiscounted, first `eval_episode_len` steps) and the extrapolation
    error |(1/N) sum_i Q_i(o_i, a_i) - G| at the start states, G the discounted Monte-Carlo return."""
    rng = np.random.default_rng(seed)
    obs = env.reset(n_episodes, rng)
    n_actions = qnet.net.layers[-1].weight.shape[-1]
    team_return, discounted_return = np.zeros(n_episodes), np.zeros(n_episodes)
    alive = np.ones(n_episodes, dtype=bool)
    for t in range(env.eval_episode_len):
        o = torch.as_tensor(np.stack(obs), device=device)  # [n_agents, episodes, obs_dim]
        avail = torch.as_tensor(pad_masks(env.avail_actions(), n_actions), device=device)
        q, logits = qnet(o)
        act = greedy_action(q, allowed_actions(logits, avail, threshold))
        if t == 0:
            q_start = take(q, act).mean(0).cpu().numpy()
            start_actions = act[:, 0].tolist()  # the joint action at the first start state
        obs, reward, terminated = env.step(list(act.cpu().numpy()))
        team_return += alive * reward
        discounted_return += alive * gamma**t * reward
        alive &= ~terminated
        if not alive.any():
            break
    return dict(
        team_return=float(team_return.mean()),
        team_return_std=float(team_return.std()),
        extrapolation_error=float(np.abs(q_start - discounted_return).mean()),
        q_start=float(q_start.mean()),
        mc_return=float(discounted_return.mean()),
        start_actions=start_actions,
    )


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


@torch.no_grad()
def matrix_game_tables(env, agent_data, agent_ids, lambda_tn, qnet, qnet_target, threshold, args, device):
    """Tables 2-4 of the paper from the learned networks: per agent and own action a, the dataset's
    P(outcome | start, a), the weights lambda_tn (in use) and lambda_vd (final target networks), the
    modified P^ ~ P lambda_tn lambda_vd, the expected return sum_s' P^(s') V'(s') and the network's own
    estimate Q_i(start, a) / gamma (what the greedy policy compares); next to the closed-form fixed
    point of the same formulas on the same data (outcome values = payoffs)."""
    n, m = env.act_dims
    n_actions = qnet.net.layers[-1].weight.shape[-1]
    tables = []
    for e, i in enumerate(agent_ids):
        n_own, n_other = env.act_dims[i], env.act_dims[1 - i]
        payoff = env.payoff if i == 0 else env.payoff.T  # [own, other]
        d = agent_data[i]
        first = d["obs"][:, 0] == 1
        own, outcome = d["actions"][first], d["next_obs"][first, 1:].argmax(1)
        other = outcome % m if i == 0 else outcome // m
        counts, tn_sum = np.zeros((n_own, n_other)), np.zeros((n_own, n_other))
        np.add.at(counts, (own, other), 1)
        agent_tn = lambda_tn[e, : len(d["rewards"])].cpu().numpy()
        np.add.at(tn_sum, (own, other), agent_tn[first])
        p_data = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        tn = np.where(counts > 0, tn_sum / np.maximum(counts, 1), 1.0)  # constant per type anyway
        # every (own, other) pair as a start-state transition, seen by every ensemble member
        a, b = np.meshgrid(np.arange(n_own), np.arange(n_other), indexing="ij")
        joint = (a, b) if i == 0 else (b, a)
        obs = np.zeros((a.size, env.state_dim), np.float32)
        obs[:, 0] = 1
        next_obs = np.zeros_like(obs)
        next_obs[np.arange(a.size), env.outcome_index(joint[0].ravel(), joint[1].ravel())] = 1
        rep = lambda x: torch.as_tensor(x, device=device).expand(len(agent_ids), *x.shape)  # noqa: E731
        next_avail = rep(pad_masks([np.ones((a.size, env.act_dims[i]), bool)], n_actions)[0])
        actions = rep(a.ravel().astype(np.int64))
        next_value, q_sa = (x[e] for x in targets(qnet, qnet_target, rep(obs), actions, rep(next_obs), next_avail, threshold[e]))
        vd = torch.ones_like(next_value) if args.no_vd else value_deviation(
            next_value, q_sa, torch.zeros_like(q_sa), torch.zeros_like(q_sa, dtype=torch.bool), args.gamma, args.epsilon)
        vd = vd.cpu().numpy().reshape(n_own, n_other)
        weights = p_data * tn * vd
        p_mod = weights / np.maximum(weights.sum(1, keepdims=True), 1e-12)
        next_value = next_value.cpu().numpy().reshape(n_own, n_other)
        q_start = qnet.q(rep(obs[:1]))[e, 0, :n_own].cpu().numpy()
        p_closed, e_closed = closed_form(p_data, payoff, tn, not args.no_vd, args.epsilon)
        tables.append(dict(
            agent_id=i, payoff=payoff.tolist(), counts=counts.astype(int).tolist(), p_dataset=p_data.tolist(),
            lambda_tn=tn.tolist(), lambda_vd=vd.tolist(), p_modified=p_mod.tolist(), p_closed_form=p_closed.tolist(),
            next_value=next_value.tolist(), expected_return=(p_mod * next_value).sum(1).tolist(),
            expected_return_closed_form=e_closed.tolist(), q_over_gamma=(q_start / args.gamma).tolist(),
            lambda_tn_step2=[float(f(agent_tn[~first])) for f in (np.mean, np.min, np.max)],  # outcome -> end: exact 1
        ))
    return tables


def print_tables(tables, args):
    weights = "no weights (BCQ)" if args.no_vd and args.no_tn else " * ".join(
        w for w, off in (("lambda_vd", args.no_vd), (f"lambda_tn ({args.tn_estimator})", args.no_tn)) if not off)
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


def write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.threshold is None:
        args.threshold = PRESETS.get(args.env_id, {}).get("threshold", DEFAULT_THRESHOLD)
    if not 0 <= args.epsilon <= 1:
        raise InputError(f"--epsilon must lie in [0, 1] (lambda_vd is clipped to [1 - eps, 1 + eps]), got {args.epsilon}")
    if not 0 <= args.threshold < 1:
        raise InputError(f"--threshold must lie in [0, 1) (the greedy action must pass its own filter), got {args.threshold}")
    if not 0 < args.tau <= 1:
        raise InputError(f"--tau must lie in (0, 1], got {args.tau}")
    for name in ("total_steps", "vae_steps"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("eval_freq", "eval_episodes", "batch_size", "vae_batch_size", "hidden_dim", "target_update_freq"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    if args.track:
        try:
            import wandb
        except ImportError:
            raise InputError("--track needs wandb: pip install wandb") from None
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True)
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_flush_denormal(True)  # Adam's second moments decay into denormals, which are ~10x slower on CPU
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # data: agent i reads only its own file
    env_kwargs = {k: getattr(args, k) for k in ("payoff", "behavior") if getattr(args, k) is not None}
    recipe = {"n_episodes": args.n_episodes}
    env = envs.make(args.env_id, **env_kwargs)
    full_env_kwargs, _ = envs.resolve(args.env_id, env_kwargs)
    if not env.discrete:
        raise InputError(f"{args.env_id} has continuous actions; use mabcq_continuous.py or matd3bc.py")
    n_agents, obs_dim, n_actions = env.n_agents, env.obs_dims[0], max(env.act_dims)
    if args.checkpoints:
        agent_ids = list(range(n_agents))
        if len(args.checkpoints) != n_agents:
            raise InputError(f"--checkpoints needs one file per agent ({n_agents} for {args.env_id}), got {len(args.checkpoints)}")
    elif args.agent_ids is None:
        agent_ids = list(range(n_agents))
    else:
        try:
            agent_ids = [int(i) for i in args.agent_ids.split(",")]
        except ValueError:
            raise InputError(f"--agent-ids takes comma-separated integers like `0,1`, got {args.agent_ids!r}") from None
        if len(set(agent_ids)) != len(agent_ids) or not all(0 <= i < n_agents for i in agent_ids):
            raise InputError(f"--agent-ids must be distinct ids in 0..{n_agents - 1}, got {args.agent_ids!r}")
    generators = agent_generators(args.seed, agent_ids, device)
    qnet = QNetwork(obs_dim, n_actions, args.hidden_dim, generators, device)
    threshold = torch.full((len(agent_ids), 1, 1), args.threshold, device=device)  # per agent
    results = dict(run_name=run_name, args=asdict(args), agent_ids=agent_ids, evaluations=[])

    if args.checkpoints:  # evaluate a team assembled from separately trained agents
        for i, path in enumerate(args.checkpoints):
            try:
                ckpt = torch.load(path, map_location=device)
            except (OSError, RuntimeError) as e:
                raise InputError(f"cannot load checkpoint {path} ({e})") from None
            if (ckpt.get("env_id"), ckpt.get("env_kwargs"), ckpt.get("agent_id")) != (args.env_id, full_env_kwargs, i):
                raise InputError(
                    f"{path} holds agent {ckpt.get('agent_id')} of {ckpt.get('env_id')} {ckpt.get('env_kwargs')}, "
                    f"expected agent {i} of {args.env_id} {full_env_kwargs}"
                )
            if ckpt["args"]["hidden_dim"] != args.hidden_dim:
                raise InputError(f"{path} has --hidden-dim {ckpt['args']['hidden_dim']}; pass the same --hidden-dim")
            load_agent_state(qnet, i, n_agents, ckpt["qnet"])
            threshold[i] = ckpt["args"]["threshold"]  # every agent acts with its own filter
        metrics = evaluate(env, qnet, threshold, args.eval_episodes, args.gamma, args.seed, device)
        results.update(final=metrics, checkpoints=list(args.checkpoints))
        write_json(f"runs/{run_name}/results.json", results)
        print(f"team of {len(args.checkpoints)} checkpoints: return {metrics['team_return']:.2f} ± {metrics['team_return_std']:.2f}"
              f", joint action at the first state {metrics['start_actions']}")
        raise SystemExit(0)

    env, agent_data, meta = datasets.load(args.env_id, env_kwargs, recipe, args.dataset_dir, agent_ids)
    data = stack_agent_data([agent_data[i] for i in agent_ids], n_actions, device)

    # ALGO LOGIC: lambda_tn is fixed per transition, computed once before Q-learning
    if args.no_tn:
        lambda_tn = torch.ones(data["rewards"].shape, device=device)
    elif args.tn_estimator == "count":
        counted = [count_lambda_tn(agent_data[i]["obs"], agent_data[i]["actions"], agent_data[i]["next_obs"]) for i in agent_ids]
        lambda_tn = torch.as_tensor(np.stack([np.pad(c, (0, data["rewards"].shape[1] - len(c)), constant_values=1) for c in counted]), device=device)
    else:
        lambda_tn, vae_logs = fit_lambda_tn(data, args, generators, device)
        for k, v in vae_logs.items():
            writer.add_scalar(k, v, 0)
        results["vae"] = vae_logs
        print(", ".join(f"{k} {v:.3f}" for k, v in vae_logs.items()))
    for e, i in enumerate(agent_ids):
        lt = lambda_tn[e, : data["size"][e]]
        print(f"agent {i}: lambda_tn mean {lt.mean():.3f} min {lt.min():.3f} max {lt.max():.3f}")

    qnet_target = QNetwork(obs_dim, n_actions, args.hidden_dim, generators, device)
    qnet_target.load_state_dict(qnet.state_dict())
    optimizer = torch.optim.Adam(qnet.parameters(), lr=args.learning_rate, fused=True)

    start_time = time.time()
    logs = {}
    progress = tqdm(range(1, args.total_steps + 1), desc="training", unit=" steps")
    for global_step in progress:
        # ALGO LOGIC: one discrete BCQ update of every agent, the TD loss weighted by lambda_tn * lambda_vd
        if (global_step - 1) % RNG_CHUNK == 0:  # one draw per agent for RNG_CHUNK steps: per-step draws cost more
            idx_chunk = sample_indices(data["size"], (RNG_CHUNK, args.batch_size), generators)
        idx = idx_chunk[:, (global_step - 1) % RNG_CHUNK]
        obs, actions, rewards = gather(data["obs"], idx), gather(data["actions"], idx), gather(data["rewards"], idx)
        next_obs, dones = gather(data["next_obs"], idx), gather(data["dones"], idx)
        avail, next_avail = gather(data["avail_actions"], idx), gather(data["next_avail_actions"], idx)
        with torch.no_grad():
            next_value, q_sa_target = targets(qnet, qnet_target, obs, actions, next_obs, next_avail, threshold)
            td_target = rewards + args.gamma * torch.where(dones, 0.0, next_value)
            weight = gather(lambda_tn, idx)
            if not args.no_vd:
                lambda_vd = value_deviation(next_value, q_sa_target, rewards, dones, args.gamma, args.epsilon)
                weight = weight * lambda_vd
        q, logits = qnet(obs)  # [n_agents, batch, n_actions]
        q_sa = take(q, actions)
        q_loss = (weight * (q_sa - td_target) ** 2).mean(-1)  # eq. (1), [n_agents]; squared, not Huber: see the docs
        # the behaviour classifier pi_b(a|s) over the available actions (unweighted: it models the data)
        log_pi_b = F.log_softmax(logits.masked_fill(~avail, -torch.inf), -1)
        imitation_loss = -take(log_pi_b, actions).mean(-1) + IMITATION_LOGIT_PENALTY * logits.pow(2).mean((1, 2))
        optimizer.zero_grad(set_to_none=True)
        (q_loss + imitation_loss).sum().backward()  # sum over agents: each agent's gradient is its own loss's
        optimizer.step()
        if global_step % args.target_update_freq == 0:
            soft_update(qnet_target, qnet, args.tau)

        if global_step % 1000 == 0:
            logs = {
                "losses/q_loss": q_loss.mean().item(),
                "losses/imitation_loss": imitation_loss.mean().item(),
                "losses/q_values": q_sa.mean().item(),
                "charts/allowed_actions": allowed_actions(logits, avail, threshold).float().sum(-1).mean().item(),
                "charts/steps_per_second": global_step / (time.time() - start_time),
            }
            if not args.no_tn:
                batch_tn = gather(lambda_tn, idx)
                logs.update({"weights/lambda_tn_mean": batch_tn.mean().item(), "weights/lambda_tn_min": batch_tn.min().item(),
                             "weights/lambda_tn_max": batch_tn.max().item()})
            if not args.no_vd:
                live = lambda_vd[~dones] if (~dones).any() else lambda_vd  # terminal transitions are 1 by definition
                logs.update({"weights/lambda_vd_mean": live.mean().item(), "weights/lambda_vd_min": live.min().item(),
                             "weights/lambda_vd_max": live.max().item(),
                             "weights/lambda_vd_clipped": ((live - 1).abs() >= args.epsilon - 1e-6).float().mean().item()})
            for k, v in logs.items():
                writer.add_scalar(k, v, global_step)

        if global_step % args.eval_freq == 0 or global_step == args.total_steps:
            evaluation = dict(step=global_step, seconds=round(time.time() - start_time, 1))
            if len(agent_ids) == n_agents:
                evaluation.update(evaluate(env, qnet, threshold, args.eval_episodes, args.gamma, args.seed + global_step, device))
            evaluation.update({k: v for k, v in logs.items() if k.startswith(("weights/", "losses/"))})
            if args.env_id == "matrix-game":
                evaluation["tables"] = matrix_game_tables(env, agent_data, agent_ids, lambda_tn, qnet, qnet_target, threshold, args, device)
                values = [max(t["q_over_gamma"]) * args.gamma for t in evaluation["tables"]]  # V_i(start)
                evaluation["start_value_difference"] = max(values) - min(values)  # Proposition 1: consensus on V
            for k, v in evaluation.items():
                if isinstance(v, float) and k != "seconds" and "/" not in k:
                    writer.add_scalar(f"eval/{k}", v, global_step)
            results["evaluations"].append(evaluation)
            results["final"] = evaluation
            write_json(f"runs/{run_name}/results.json", results)
            line = f"step {global_step}"
            if "team_return" in evaluation:
                line += f" | team return {evaluation['team_return']:.2f} ± {evaluation['team_return_std']:.2f}"
                line += f" | extrapolation error {evaluation['extrapolation_error']:.2f}"
            if "weights/lambda_vd_mean" in logs:
                line += f" | lambda_vd {logs['weights/lambda_vd_mean']:.3f}"
            progress.write(line)

    if args.env_id == "matrix-game" and "final" in results:  # the paper's Tables 2-4, then the joint action
        print_tables(results["final"]["tables"], args)
        if "start_actions" in results["final"]:
            joint = results["final"]["start_actions"]
            print(f"greedy joint action (a{joint[0] + 1}, a{joint[1] + 1}): payoff {results['final']['team_return']:g}")

    if args.save_model:
        for e, agent_id in enumerate(agent_ids):
            path = f"runs/{run_name}/agent_{agent_id}.pt"
            torch.save(dict(
                agent_id=agent_id, env_id=args.env_id, env_kwargs=meta["env_kwargs"], args=asdict(args),
                qnet=agent_state(qnet, e, len(agent_ids)),
            ), path + ".tmp")
            os.replace(path + ".tmp", path)
            print(f"saved {path}")
    writer.close()
