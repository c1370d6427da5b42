# docs and experiment results: docs/mabcq_continuous.md
"""MABCQ (continuous): BCQ (Fujimoto, Meger & Precup, 2019) with the value deviation and transition
normalisation weights of "Offline Decentralized Multi-Agent Reinforcement Learning" (Jiang & Lu,
ECAI 2023, arXiv 2108.01832), Section 3.4 and Algorithm 1 -- and every other row of its Table 5.

Every agent i is an independent offline learner on its own dataset B_i of (s, a_i, r, s', done):
its own generative models G1 and G2 (conditional VAEs), perturbation model xi, twin critics and
optimiser state; no parameter sharing, no communication. All N learners are stored as one
batched ensemble (a leading agent dimension on every weight), mathematically N separate learners;
tests/test_mabcq_continuous.py checks that no agent's data reaches another agent's gradients.

    python mabcq_continuous.py --env-id hopper-3x1                      # MABCQ
    python mabcq_continuous.py --env-id hopper-3x1 --no-tn              # BCQ w/ lambda_vd
    python mabcq_continuous.py --env-id hopper-3x1 --no-vd              # BCQ w/ lambda_tn
    python mabcq_continuous.py --env-id hopper-3x1 --no-vd --no-tn      # BCQ
    python mabcq_continuous.py --env-id hopper-3x1 --ddpg               # DDPG: no generator, no bound, no weights
    python mabcq_continuous.py --env-id hopper-3x1 --behavior           # Behavior: G1's decoder acts, no Q
    python mabcq_continuous.py --resume runs/<run_name>                 # continue a killed run

Sections: Args -> the algorithm (networks, lambda weights, losses) -> evaluation -> data
plumbing -> the run contract (docs/results.md, the same in every script) -> main.
"""

import atexit
import contextlib
import copy
import ctypes
import json
import os
import platform
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import envs
from envs import InputError
from envs import dataset as datasets
from envs import mamujoco


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (agent i draws everything from the stream [seed, i])"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled, train on CUDA (refused when torch sees no CUDA device)"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "offline-decentralized-marl"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """whether to save one checkpoint per agent into `runs/{run_name}`"""
    run_name: str | None = None
    """the run folder under runs/ (None: `{env_id}__{exp_name}{variant}__{seed}__{time}`; may contain `/`)"""
    resume: str | None = None
    """continue the run in this folder (e.g. `runs/<run_name>`) from its checkpoint, with its flags"""
    checkpoint_freq: int = 0
    """write the training state every this many steps (0: at every evaluation)"""
    threads: int = 0
    """torch threads (0: share the cores with the other runs on this machine, see docs/results.md)"""

    # Algorithm specific arguments
    env_id: str = "hopper-3x1"
    """the environment id: halfcheetah-2x3, walker2d-2x3, hopper-3x1 or ant-2x4"""
    eval_episode_len: int | None = None
    """steps of an evaluation episode (None: the env's 1000); the dataset does not depend on it"""
    dataset_dir: str = datasets.default_dataset_dir()
    """root folder of the datasets (built there if absent; env var ODMARL_DATASET_DIR)"""
    n_transitions: int | None = None
    """dataset recipe: transitions per agent (None: the recipe's 1e6)"""
    episode_len: int | None = None
    """dataset recipe: steps of a dataset episode before its time limit (None: the recipe's 1000)"""
    behavior_dir: str | None = None
    """dataset recipe: folder of the SAC behaviour actors, <env-id>/{early,intermediate,expert}.pt (None: the shipped ones)"""
    agent_ids: str | None = None
    """comma-separated agents to train, e.g. `0`; only their dataset files are read (None: all)"""
    checkpoints: tuple[str, ...] = ()
    """evaluate a team assembled from these per-agent checkpoints (one per agent, in order) and exit"""
    total_steps: int = 50_000
    """gradient steps per agent (50k: the reduced scale of docs/mabcq_continuous.md)"""
    eval_freq: int = 5_000
    """evaluate the team every this many steps"""
    eval_episodes: int = 10
    """evaluation episodes per evaluation (run side by side)"""
    batch_size: int = 1024
    """the batch size of each agent, also of the G1/G2 fit (ECAI Appendix B on MuJoCo; BCQ's code: 100)"""
    hidden_dim: tuple[int, ...] = (64, 64)
    """hidden widths of the critics, xi and the DDPG actor; one number = two layers (ECAI: 64 64; BCQ's code: 400 300)"""
    vae_hidden_dim: tuple[int, ...] | None = None
    """hidden widths of G1's and G2's encoders and decoders (None: --hidden-dim; BCQ's code: 750 750)"""
    q_learning_rate: float = 1e-3
    """the learning rate of the critics (ECAI Table 12 and BCQ's code)"""
    xi_learning_rate: float = 1e-4
    """the learning rate of xi, and of the DDPG row's actor (ECAI Table 12; BCQ's code: 1e-3)"""
    g_learning_rate: float = 1e-3
    """the learning rate of G1 and G2 (BCQ's code; ECAI Table 12 says 1e-4, which leaves G1 unfit after 10k steps: docs)"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    phi: float = 0.05
    """the perturbation bound Phi: |xi(s, a) - a| <= Phi * max_action, max_action = 1"""
    lmbda: float = 0.75
    """BCQ's soft clipped double Q: lmbda * min + (1 - lmbda) * max of the twin critics"""
    n_samples: int = 10
    """actions sampled from G1 (and perturbed) for the target value V'(s')"""
    act_samples: int = 10
    """actions sampled from G1 (and perturbed) to act (ECAI and BCQ's paper: n = 10; BCQ's code: 100)"""
    vae_latent_dim: int = 10
    """the latent size of G1 and G2 (ECAI's "VAE hidden space": 10; BCQ's code: 2 x the action size)"""
    vae_kl_weight: float = 0.5
    """G1's and G2's loss: the mean squared error over action dims + this x the KL mean over latent dims (BCQ's code: 0.5)"""
    vae_steps: int = 10_000
    """gradient steps of the G1 and G2 fit before Q-learning (Algorithm 1, line 4); lambda_tn is computed from them once"""
    train_generator: bool = False
    """keep training G1 (unweighted) during Q-learning, as BCQ's code does (default: fitted, then frozen, Algorithm 1)"""
    normalize_obs: bool = False
    """normalise observations with the mean/std of the agent's own dataset (BCQ has none)"""
    epsilon: float | None = None
    """optimism level: lambda_vd is clipped to [1 - epsilon, 1 + epsilon] (None: the task's preset, PRESETS)"""
    no_vd: bool = False
    """switch off the value deviation weight lambda_vd"""
    no_tn: bool = False
    """switch off the transition normalisation weight lambda_tn (G2 is then not fitted)"""
    tn_max: float = 10.0
    """lambda_tn is capped at this (>= 1): the paper finds [0.2, 1.4] for almost all samples, but the VAE ratio gives a few rare transitions 1e4 to 1e7 on SMAX"""
    ddpg: bool = False
    """Table 5's DDPG row: a deterministic tanh actor maximising Q, one critic, no generator, no bound, no weights"""
    behavior: bool = False
    """Table 5's Behavior row: act with G1's decoder at z = 0; no critic, no Q-learning"""
    analysis_states: int = 10_000
    """states sampled from the union of the agents' data for the value-difference metric"""


# the paper's optimism level epsilon per task (Appendix B): tuned by the authors per robot
PRESETS = {
    "halfcheetah-2x3": dict(epsilon=0.80),
    "walker2d-2x3": dict(epsilon=0.48),
    "hopper-3x1": dict(epsilon=0.80),
    "ant-2x4": dict(epsilon=0.64),
}


def check_args(args: Args) -> None:
    """Every flag's range, before anything is read or written (dataset options: envs.resolve)."""
    if not 0 <= args.epsilon <= 1:
        raise InputError(f"--epsilon must lie in [0, 1] (lambda_vd is clipped to [1 - eps, 1 + eps]), got {args.epsilon}")
    if not args.tn_max >= 1:
        raise InputError(f"--tn-max must be >= 1 (a cap of 1 leaves no lambda_tn above 1), got {args.tn_max}")
    if args.ddpg and args.behavior:
        raise InputError("--ddpg and --behavior are two rows of Table 5; pick one")
    if args.ddpg and args.train_generator:
        raise InputError("--train-generator trains BCQ's generator G1; the --ddpg row has none")
    for name, ok, rule in (("tau", 0 < args.tau <= 1, "(0, 1]"), ("gamma", 0 < args.gamma < 1, "(0, 1)"),
                           ("lmbda", 0 <= args.lmbda <= 1, "[0, 1]"), ("phi", 0 < args.phi <= 1, "(0, 1]")):
        if not ok:
            raise InputError(f"--{name} must lie in {rule}, got {getattr(args, name)}")
    for name in ("hidden_dim", "vae_hidden_dim"):
        widths = getattr(args, name)
        if widths is not None and (not widths or min(widths) <= 0):
            raise InputError(f"--{name.replace('_', '-')} takes one or more positive widths, e.g. `64 64`, got {widths}")
    for name in ("total_steps", "vae_steps", "checkpoint_freq", "threads"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("eval_freq", "eval_episodes", "batch_size", "n_samples", "act_samples", "vae_latent_dim", "analysis_states",
                 "q_learning_rate", "xi_learning_rate", "g_learning_rate", "vae_kl_weight"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


def algorithm(args: Args) -> tuple[str, str]:
    """The paper's name of what the flags make (results.json `algorithm`, a row of Table 5) and the run-name variant."""
    suffix = "-train_generator" if args.train_generator else ""
    if args.ddpg:
        return "DDPG", "-ddpg"
    if args.behavior:
        return "Behavior", "-behavior" + suffix
    variant = "".join(f"-{flag}" for flag in ("no_vd", "no_tn") if getattr(args, flag)) + suffix
    weights = [w for w, off in (("lambda_vd", args.no_vd), ("lambda_tn", args.no_tn)) if not off]
    name = "MABCQ" if len(weights) == 2 else "BCQ" + (f" w/ {weights[0]}" if weights else "")
    return name, variant


def agent_generators(seed: int, agent_ids: list[int], device) -> list[torch.Generator]:
    """One random stream per agent, seeded by (seed, agent id): what agent i draws never
    depends on which other agents train in the same process."""
    return [
        torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        for i in agent_ids
    ]


def randn(generators, *shape, device) -> torch.Tensor:  # [n_agents, *shape]
    return torch.stack([torch.randn(*shape, generator=g, device=device) for g in generators])


# ALGO LOGIC: the networks, one member per agent (or per agent and twin)
class VectorizedLinear(nn.Module):
    """Independent linear layers, one per ensemble member: weight [members, in, out], input [members, batch, in].

    `twins` members per agent are stored twin-major (member k * n_agents + i), so the first
    n_agents members are every agent's first twin."""

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


def widths(hidden_dim) -> tuple[int, ...]:
    """`--hidden-dim 64` means (64, 64), as in the other scripts; `--hidden-dim 400 300` is BCQ's code."""
    return tuple(hidden_dim) * 2 if len(hidden_dim) == 1 else tuple(hidden_dim)


class MLP(nn.Module):
    """ReLU MLP of VectorizedLinear layers with the given hidden widths; `members` picks a slice of the ensemble."""

    def __init__(self, in_dim, out_dim, hidden_dim, generators, twins=1, device=None):
        super().__init__()
        sizes = [in_dim, *widths(hidden_dim), out_dim]
        self.layers = nn.ModuleList([VectorizedLinear(a, b, generators, twins, device) for a, b in zip(sizes, sizes[1:])])

    def forward(self, x, members=None):
        for layer in self.layers[:-1]:
            x = torch.relu_(layer(x, members))
        return self.layers[-1](x, members)


class Perturbation(nn.Module):
    """BCQ's perturbation model xi_phi(s, a) = a + Phi * tanh(MLP(s, a)), clipped to the action range [-1, 1]."""

    def __init__(self, obs_dim, act_dim, hidden_dim, phi, generators, device=None):
        super().__init__()
        self.net = MLP(obs_dim + act_dim, act_dim, hidden_dim, generators, device=device)
        self.phi = phi

    def forward(self, obs, act):  # [n_agents, batch, *] -> [n_agents, batch, act_dim]
        return (act + self.phi * torch.tanh(self.net(torch.cat([obs, act], -1)))).clamp(-1, 1)


class DeterministicActor(nn.Module):
    """The DDPG row's actor: tanh(MLP(s)), no generator, no perturbation bound."""

    def __init__(self, obs_dim, act_dim, hidden_dim, generators, device=None):
        super().__init__()
        self.net = MLP(obs_dim, act_dim, hidden_dim, generators, device=device)

    def forward(self, obs):  # [n_agents, batch, obs_dim] -> [n_agents, batch, act_dim]
        return torch.tanh(self.net(obs))


class Critics(nn.Module):
    """`twins` critics of every agent in one ensemble of twins * N members (BCQ: 2, DDPG: 1)."""

    def __init__(self, obs_dim, act_dim, hidden_dim, generators, twins=2, device=None):
        super().__init__()
        self.net = MLP(obs_dim + act_dim, 1, hidden_dim, generators, twins=twins, device=device)
        self.twins = twins

    def forward(self, obs, act):  # [n_agents, batch, *] -> [twins, n_agents, batch]
        n, b, _ = obs.shape
        return self.net(torch.cat([obs, act], -1).repeat(self.twins, 1, 1)).view(self.twins, n, b)

    def q1(self, obs, act):  # the first twin only: [n_agents, batch]
        n, b, _ = obs.shape
        return self.net(torch.cat([obs, act], -1), slice(0, n)).view(n, b)


class ConditionalVAE(nn.Module):
    """E(mu, sigma | cond, a) and D(a | cond, z), one per agent; cond is s (G1) or (s, s') (G2)."""

    def __init__(self, cond_dim, act_dim, latent_dim, hidden_dim, generators, device=None, kl_weight=0.5):
        super().__init__()
        self.encoder = MLP(cond_dim + act_dim, 2 * latent_dim, hidden_dim, generators, device=device)
        self.decoder = MLP(cond_dim + latent_dim, act_dim, hidden_dim, generators, device=device)
        self.latent_dim, self.kl_weight = latent_dim, kl_weight

    def encode(self, cond, act):
        mean, log_std = self.encoder(torch.cat([cond, act], -1)).split(self.latent_dim, -1)
        return mean, log_std.clamp(-4, 15)  # BCQ's clamp, for numerical stability

    def decode(self, cond, noise=None):
        """Actions in [-1, 1] from the decoder: z = standard normal `noise` [n_agents, batch, latent] clipped to
        [-0.5, 0.5] as in BCQ, or z = 0 (the latent prior's mode) without it."""
        z = torch.zeros(*cond.shape[:-1], self.latent_dim, device=cond.device) if noise is None else noise.clamp(-0.5, 0.5)
        return torch.tanh(self.decoder(torch.cat([cond, z], -1)))

    def loss(self, cond, act, noise):
        """Per-agent loss [n_agents]: BCQ's reconstruction MSE + kl_weight (BCQ: 0.5) x KL.

        Both terms are means (over the k action dims, over the d latent dims), so a nat of KL costs kl_weight / d
        while the latent can only pay back through the per-dim MSE: for a Gaussian spread of the action given the
        state, variance v per dim, the latent is worth using only if 2 v / k > kl_weight / d (the rate-distortion
        slope at rate 0); below that the optimum ignores z (docs/mabcq_continuous.md)."""
        mean, log_std = self.encode(cond, act)
        z = mean + log_std.exp() * noise
        recon = torch.tanh(self.decoder(torch.cat([cond, z], -1)))
        recon_loss = ((recon - act) ** 2).mean((1, 2))
        kl = -0.5 * (1 + 2 * log_std - mean**2 - (2 * log_std).exp()).mean((1, 2))
        return recon_loss + self.kl_weight * kl


def make_networks(args, obs_dim, act_dim, generators, device) -> dict:
    """The networks of the row besides the generative models, each agent's initial weights from its own stream:
    BCQ rows twin critics and xi, DDPG one critic and a deterministic actor, Behavior none."""
    if args.behavior:
        return {}
    if args.ddpg:
        return dict(critic=Critics(obs_dim, act_dim, args.hidden_dim, generators, twins=1, device=device),
                    actor=DeterministicActor(obs_dim, act_dim, args.hidden_dim, generators, device))
    return dict(critic=Critics(obs_dim, act_dim, args.hidden_dim, generators, twins=2, device=device),
                xi=Perturbation(obs_dim, act_dim, args.hidden_dim, args.phi, generators, device))


def make_generative_models(args, obs_dim, act_dim, generators, device):
    """G1(a | s) and G2(a | s, s'), created together for every row but DDPG, so that G1 starts (and, fitted on the
    same draws, ends) the same whether or not lambda_tn is on: every row of a seed samples the same G1."""
    hidden = args.vae_hidden_dim or args.hidden_dim
    g1 = ConditionalVAE(obs_dim, act_dim, args.vae_latent_dim, hidden, generators, device, args.vae_kl_weight)
    g2 = ConditionalVAE(2 * obs_dim, act_dim, args.vae_latent_dim, hidden, generators, device, args.vae_kl_weight)
    return g1, g2


def value_deviation(next_value, q_sa, rewards, dones, gamma, epsilon):
    """lambda_vd = clip(1 + (V'(s') - E[V(s')]) / |E[V(s')]|, 1 - eps, 1 + eps), from target networks.

    E[V(s')] is estimated from the sample as (Q(s, a) - r) / gamma. A terminal transition
    has no next-state value to be optimistic about: its weight is 1.
    """
    expected = (q_sa - rewards) / gamma
    lambda_vd = 1 + (next_value - expected) / (expected.abs() + 1e-6)
    lambda_vd = lambda_vd.clamp(1 - epsilon, 1 + epsilon)
    return torch.where(dones, torch.ones_like(lambda_vd), lambda_vd)


def transition_normalization(g1_mean, g2_mean):
    """lambda_tn = rho_N(0,I)(mu1) / rho_N(0,I)(mu2) = exp((|mu2|^2 - |mu1|^2) / 2), ~ 1 / P_B(s'|s, a_i)."""
    return torch.exp(((g2_mean**2).sum(-1) - (g1_mean**2).sum(-1)) / 2)


def lambda_tn_summary(lambda_tn, sizes, agent_ids, tn_max) -> dict:
    """Per agent, before the cap at --tn-max: mean, min, 1st/50th/99th percentile, max, and the fraction capped."""
    out = {}
    for e, i in enumerate(agent_ids):
        lt = lambda_tn[e, : sizes[e]].float()
        p1, p50, p99 = torch.quantile(lt, torch.tensor([0.01, 0.5, 0.99], device=lt.device)).tolist()
        out[str(i)] = dict(mean=lt.mean().item(), min=lt.min().item(), p1=p1, median=p50, p99=p99, max=lt.max().item(),
                           capped=(lt > tn_max).float().mean().item())
    return out


def soft_clipped(q, lmbda):
    """BCQ's soft clipped double Q, lmbda * min + (1 - lmbda) * max over the twins: q [twins, ...] -> [...].
    With one critic (DDPG) it is that critic's value."""
    return lmbda * q.min(0).values + (1 - lmbda) * q.max(0).values


def perturbed_samples(obs, g1, xi, noise):
    """a_j + xi(s, a_j), a_j ~ G1(s), for n samples per state, all in one batched call.
    obs [n_agents, batch, obs_dim], noise [n_agents, batch * n, latent] -> (states, actions), both [n_agents, batch * n, *]."""
    repeated = obs.repeat_interleave(noise.shape[1] // obs.shape[1], 1)  # n copies of each state, side by side
    return repeated, xi(repeated, g1.decode(repeated, noise))


def bcq_policy(obs, g1, xi, critic, noise):
    """BCQ's policy (Section 3.4): n actions from G1, perturbed by xi, the one with the highest Q1 (as BCQ's code).
    obs [n_agents, batch, obs_dim], noise [n_agents, batch * n, latent] -> [n_agents, batch, act_dim]."""
    n_agents, batch, _ = obs.shape
    repeated, act = perturbed_samples(obs, g1, xi, noise)
    best = critic.q1(repeated, act).view(n_agents, batch, -1).argmax(-1)  # [n_agents, batch]
    act = act.view(n_agents, batch, -1, act.shape[-1])  # [n_agents, batch, n, act_dim]
    return act.gather(2, best[..., None, None].expand(-1, -1, 1, act.shape[-1])).squeeze(2)


def bcq_next_value(next_obs, g1, xi_target, critic_target, noise, lmbda):
    """V'(s') = max_j [lmbda min_k + (1 - lmbda) max_k] Q^_k(s', a_j + xi^(s', a_j)), a_j ~ G1(s'): BCQ's target
    value from the target networks (G1 itself has no target copy, as in BCQ's code).
    next_obs [n_agents, batch, obs_dim], noise [n_agents, batch * n, latent] -> [n_agents, batch]."""
    n_agents, batch, _ = next_obs.shape
    repeated, act = perturbed_samples(next_obs, g1, xi_target, noise)
    return soft_clipped(critic_target(repeated, act), lmbda).view(n_agents, batch, -1).max(-1).values


def bcq_critic_loss(critic, critic_target, xi_target, g1, batch, noise, gamma, lmbda, epsilon, use_vd):
    """Per-agent TD loss E[lambda_tn * lambda_vd * (Q_k(s, a) - y)^2], summed over the twins (eq. (1)),
    y = r + gamma (1 - done) V'(s'), V' = bcq_next_value. lambda_vd = clip(1 + (V'(s') - E) / |E|) with
    E = (Q^(s, a) - r) / gamma, Q^ the same soft clipped combination of the target critics as V'.
    batch: [n_agents, batch, *] tensors; noise [n_agents, batch * n, latent].
    Returns (loss [n_agents], Q [2, n_agents, batch], weight lambda_tn * lambda_vd [n_agents, batch], lambda_vd or None)."""
    obs, actions, rewards, dones = batch["obs"], batch["actions"], batch["rewards"], batch["dones"]
    with torch.no_grad():
        next_value = bcq_next_value(batch["next_obs"], g1, xi_target, critic_target, noise, lmbda)
        td_target = rewards + gamma * (~dones) * next_value
        weight, lambda_vd = batch["lambda_tn"], None
        if use_vd:
            q_sa = soft_clipped(critic_target(obs, actions), lmbda)
            lambda_vd = value_deviation(next_value, q_sa, rewards, dones, gamma, epsilon)
            weight = weight * lambda_vd
    q = critic(obs, actions)  # [2, n_agents, batch]
    return (weight * (q - td_target) ** 2).mean(-1).sum(0), q, weight, lambda_vd


def bcq_perturbation_loss(xi, critic, g1, obs, noise, weight):
    """Per-agent -E[lambda_tn * lambda_vd * Q_1(s, a + xi(s, a))], a ~ G1(s) (eq. (2), Q_1 as BCQ's code).
    obs [n_agents, batch, obs_dim], noise [n_agents, batch, latent], weight [n_agents, batch] -> [n_agents]."""
    with torch.no_grad():
        sampled = g1.decode(obs, noise)
    critic.requires_grad_(False)  # the perturbation loss trains xi only
    q1 = critic.q1(obs, xi(obs, sampled))
    critic.requires_grad_(True)
    return -(weight * q1).mean(-1)


def ddpg_losses(actor, actor_target, critic, critic_target, batch, gamma):
    """Offline DDPG per agent (Table 5's unconstrained baseline): one critic, y = r + gamma (1 - done) Q^(s', pi^(s')),
    the actor maximises Q(s, pi(s)); no weights. Returns (critic loss, actor loss, Q [1, n_agents, batch])."""
    with torch.no_grad():
        y = batch["rewards"] + gamma * (~batch["dones"]) * critic_target.q1(batch["next_obs"], actor_target(batch["next_obs"]))
    q = critic(batch["obs"], batch["actions"])
    critic.requires_grad_(False)  # the actor loss trains the actor only
    actor_loss = -critic.q1(batch["obs"], actor(batch["obs"])).mean(-1)
    critic.requires_grad_(True)
    return ((q - y) ** 2).mean(-1).sum(0), actor_loss, q


def fit_generative_models(g1, g2, data, args, generators, device, fit_g2=True, progress=True, on_step=None):
    """Algorithm 1, line 4: fit G1(a|s) and, for lambda_tn, G2(a|s, s') on each agent's own data; then compute
    lambda_tn once for every transition (both are frozen afterwards). Returns (lambda_tn [n_agents, T] or None, logs)."""
    optimizer = torch.optim.Adam([*g1.parameters(), *(g2.parameters() if fit_g2 else [])], lr=args.g_learning_rate, fused=True)
    logs = {}
    for _ in tqdm(range(args.vae_steps), desc="fitting G1" + (" and G2" if fit_g2 else ""), disable=not progress):
        if on_step is not None:  # e.g. the run's share of the cores
            on_step()
        idx = sample_indices(data["size"], (args.batch_size,), generators)
        obs, act, next_obs = gather(data["obs"], idx), gather(data["actions"], idx), gather(data["next_obs"], idx)
        noise = randn(generators, 2, args.batch_size, args.vae_latent_dim, device=device)  # drawn for G2 even without it
        loss_g1 = g1.loss(obs, act, noise[:, 0])
        loss_g2 = g2.loss(torch.cat([obs, next_obs], -1), act, noise[:, 1]) if fit_g2 else torch.zeros_like(loss_g1)
        optimizer.zero_grad(set_to_none=True)
        (loss_g1 + loss_g2).sum().backward()
        optimizer.step()
    if args.vae_steps:
        logs = {"vae/g1_loss": loss_g1.mean().item(), **({"vae/g2_loss": loss_g2.mean().item()} if fit_g2 else {})}
    lambda_tn = torch.empty(data["obs"].shape[:2], device=device) if fit_g2 else None
    mu_sq = torch.zeros(2, device=device)  # sums of |mu1|^2 and |mu2|^2 over the agents' own rows: near 0 = the latent unused
    sizes, rows = torch.tensor(data["size"], device=device)[:, None], torch.arange(data["obs"].shape[1], device=device)
    with torch.no_grad():
        for start in range(0, data["obs"].shape[1], 65536):
            s = slice(start, start + 65536)
            obs, act, next_obs, own = data["obs"][:, s], data["actions"][:, s], data["next_obs"][:, s], rows[s] < sizes
            mu1, _ = g1.encode(obs, act)
            mu_sq[0] += ((mu1**2).sum(-1) * own).sum()
            if fit_g2:
                mu2, _ = g2.encode(torch.cat([obs, next_obs], -1), act)
                mu_sq[1] += ((mu2**2).sum(-1) * own).sum()
                lambda_tn[:, s] = transition_normalization(mu1, mu2)
    n = sum(data["size"])
    logs.update({"vae/mu1_sq_norm": mu_sq[0].item() / n, **({"vae/mu2_sq_norm": mu_sq[1].item() / n} if fit_g2 else {})})
    return lambda_tn, logs


def team_policy(args, nets, g1, seed, device):
    """The row's policy, obs [n_agents, batch, obs_dim] -> actions. BCQ's samples come from a stream of their own,
    seeded by `seed`, never the agents' training streams: evaluating changes no training."""
    if args.ddpg:
        return nets["actor"]
    if args.behavior:
        return lambda obs: g1.decode(obs)  # z = 0: the decoder's action at the latent prior's mode
    stream = torch.Generator(device).manual_seed(seed)
    return lambda obs: bcq_policy(obs, g1, nets["xi"], nets["critic"], torch.randn(
        obs.shape[0], obs.shape[1] * args.act_samples, args.vae_latent_dim, generator=stream, device=device))


# ALGO LOGIC: evaluation of the team and the paper's analysis metrics
@torch.no_grad()
def evaluate(env, act, critic, obs_mean, obs_std, n_episodes, gamma, lmbda, seed, device):
    """Run the team's policies `act(obs [n_agents, episodes, obs_dim]) -> actions` in `n_episodes` parallel episodes.

    Returns the team return (undiscounted, first `eval_episode_len` steps), its D4RL-normalised score and, given
    critics, the extrapolation error |(1/N) sum_i Q_i(s, a_i) - G| at the start states (Table 7), Q_i the soft
    clipped value, G the discounted Monte-Carlo return of the team, rolled on past the episode length until
    gamma^t < 0.01 or the episode ends, so that G is not cut short."""
    rng = np.random.default_rng(seed)
    obs = env.reset(n_episodes, rng)
    horizon = max(env.eval_episode_len, int(np.ceil(np.log(0.01) / np.log(gamma))))
    team_return, discounted_return = np.zeros(n_episodes), np.zeros(n_episodes)
    alive = np.ones(n_episodes, dtype=bool)
    for t in range(horizon):
        o = (torch.as_tensor(np.stack(obs), device=device) - obs_mean) / obs_std  # [n_agents, episodes, obs_dim]
        a = act(o)
        if t == 0 and critic is not None:
            q_start = soft_clipped(critic(o, a), lmbda).mean(0).cpu().numpy()
        obs, reward, terminated = env.step(list(a.cpu().numpy()))
        if t < env.eval_episode_len:
            team_return += alive * reward
        discounted_return += alive * gamma**t * reward
        alive &= ~terminated
        if not alive.any() and t >= env.eval_episode_len - 1:
            break
    scores = mamujoco.normalized_score(env.env_id, team_return)
    out = dict(team_return=float(team_return.mean()), team_return_std=float(team_return.std()),
               normalized_score=float(scores.mean()), normalized_score_std=float(scores.std()))
    if critic is not None:
        out.update(extrapolation_error=float(np.abs(q_start - discounted_return).mean()), q_start=float(q_start.mean()),
                   mc_return=float(discounted_return.mean()))
    return out


@torch.no_grad()
def value_difference(act, critic, agent_obs, lmbda):
    """max_i V_i(s) - min_i V_i(s), averaged over states, V_i(s) = Q_i(s, pi_i(s)), Q_i soft clipped (Table 6)."""
    values = soft_clipped(critic(agent_obs, act(agent_obs)), lmbda)  # [n_agents, n_states]
    return float((values.max(0).values - values.min(0).values).mean())


# TRY NOT TO MODIFY: per-agent data on the device, sampled with each agent's own stream
RNG_CHUNK = 1000


def keep_freed_memory() -> None:
    """glibc (Linux): keep freed memory in the heap instead of handing it back to the kernel, so the ~10 MB activations
    of the target pass (10 x 1024 sampled next actions per agent) are not page-faulted in afresh at every step:
    19.7 instead of 26.4 ms of CPU per team update here (docs/mabcq_continuous.md). Speed only: the same numbers."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: blocks up to 32 MB come from the heap, not from mmap
    libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: do not return the heap's top to the kernel below 1 GB
    libc.mallopt(-2, 256 * 2**20)  # M_TOP_PAD: grow the heap in 256 MB steps


def sample_indices(sizes, shape, generators):  # [n_agents, *shape], agent i's from [0, sizes[i])
    return torch.stack([torch.randint(int(s), shape, generator=g, device=g.device) for s, g in zip(sizes, generators)])


def gather(array, idx):  # array [n_agents, T, *], idx [n_agents, batch] -> [n_agents, batch, *]
    return array[torch.arange(array.shape[0], device=array.device)[:, None], idx]


def stack_agent_data(agent_data: list[dict], normalize_obs: bool, device):
    """Stack the agents' arrays along a leading agent dimension, padding to the longest dataset;
    every agent samples only its own first `size` rows. Observations are normalised with each
    agent's own statistics."""
    if len({d["obs"].shape[1] for d in agent_data}) > 1 or len({d["actions"].shape[1] for d in agent_data}) > 1:
        raise InputError("the batched ensemble needs equal observation and action sizes across agents")
    size = max(len(d["rewards"]) for d in agent_data)
    out = {"size": [len(d["rewards"]) for d in agent_data]}
    for key in ("obs", "actions", "rewards", "next_obs", "dones"):
        padded = [np.concatenate([d[key], np.repeat(d[key][-1:], size - len(d[key]), 0)]) for d in agent_data]
        out[key] = torch.as_tensor(np.stack(padded), device=device)
    obs_stats = [(d["obs"].mean(0), d["obs"].std(0) + 1e-3) for d in agent_data]
    if not normalize_obs:
        obs_stats = [(np.zeros_like(m), np.ones_like(s)) for m, s in obs_stats]
    out["obs_mean"] = torch.as_tensor(np.stack([m for m, _ in obs_stats])[:, None], device=device)  # [n, 1, obs_dim]
    out["obs_std"] = torch.as_tensor(np.stack([s for _, s in obs_stats])[:, None], device=device)
    out["obs"] = (out["obs"] - out["obs_mean"]) / out["obs_std"]
    out["next_obs"] = (out["next_obs"] - out["obs_mean"]) / out["obs_std"]
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


# TRY NOT TO MODIFY: the run contract of docs/results.md, word for word the same in every script
SCRIPT = Path(__file__).stem
SCHEMA_VERSION = 1
CHECKPOINT_FORMAT = "odmarl-train-state-1"
AGENT_FORMAT = "odmarl-agent-1"
# what a --resume may change: none of these changes what is learned
RESUMABLE_CHANGES = ("resume", "total_steps", "eval_freq", "eval_episodes", "checkpoint_freq", "threads", "cuda",
                     "track", "wandb_project_name", "wandb_entity", "save_model")


def parse_args():
    """The flags; with `--resume runs/NAME` the run's saved flags are the defaults, and a change to any
    flag outside RESUMABLE_CHANGES is refused (it would make the resumed run another experiment)."""
    args = tyro.cli(Args)
    if args.resume is None:
        return args
    try:
        saved = json.loads((Path(args.resume) / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"--resume {args.resume}: no readable results.json there ({e}); pass a run folder such as runs/<run_name>") from None
    if saved.get("script") != SCRIPT:
        raise InputError(f"--resume {args.resume}: that run is of {saved.get('script')}.py, not {SCRIPT}.py")
    names = {f.name for f in fields(Args)}
    defaults = replace(Args(), **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["args"].items() if k in names})
    args = tyro.cli(Args, default=replace(defaults, resume=args.resume))
    changed = [k for k in names if k not in RESUMABLE_CHANGES and getattr(args, k) != getattr(defaults, k)]
    if changed:
        flag = changed[0].replace("_", "-")
        raise InputError(f"--resume: --{flag} {getattr(args, changed[0])} differs from the run's {getattr(defaults, changed[0])}; "
                         f"drop --{flag} to resume, or start a new run")
    return args


def parse_agent_ids(text: str | None, n_agents: int) -> list[int]:
    if text is None:
        return list(range(n_agents))
    try:
        agent_ids = [int(i) for i in text.split(",")]
    except ValueError:
        raise InputError(f"--agent-ids takes comma-separated integers like `0,1`, got {text!r}") from None
    if len(set(agent_ids)) != len(agent_ids) or not all(0 <= i < n_agents for i in agent_ids):
        raise InputError(f"--agent-ids must be distinct ids in 0..{n_agents - 1}, got {text!r}")
    return agent_ids


def pick_device(cuda: bool) -> torch.device:
    if cuda and not torch.cuda.is_available():
        raise InputError("--cuda: torch sees no CUDA device on this machine; drop --cuda to train on the CPU")
    return torch.device("cuda" if cuda else "cpu")


class CoreShare:
    """`--threads 0` shares the cores with this project's other runs on the machine: each run keeps a pid
    file in one folder and, at every `update()` (once a second at most), uses max(1, cores // live runs) threads. Two runs that
    each use both of two cores slow each other down ~6x (docs/contention.md). OMP_NUM_THREADS, when set,
    caps the cores. `--threads N` fixes N. The results do not depend on the thread count (tested)."""

    FOLDER = Path(tempfile.gettempdir()) / "odmarl-runs"

    def __init__(self, threads: int):
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        self.threads, self.cores = threads, min(len(affinity), int(os.environ.get("OMP_NUM_THREADS") or 1 << 16))
        self.checked = -1.0
        if threads == 0:
            self.FOLDER.mkdir(exist_ok=True)
            pid_file = self.FOLDER / str(os.getpid())
            pid_file.touch()
            atexit.register(pid_file.unlink, missing_ok=True)
        self.update()

    def update(self, force: bool = False) -> int:
        """Cheap enough to call at every step: it looks at the other runs at most once a second."""
        if not force and time.monotonic() - self.checked < 1.0:
            return torch.get_num_threads()
        self.checked = time.monotonic()
        n = self.threads or max(1, self.cores // max(1, self.live_runs()))
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        return n

    def live_runs(self) -> int:
        live = 0
        for pid_file in self.FOLDER.iterdir():
            try:
                os.kill(int(pid_file.name), 0)
                live += 1
            except (ValueError, ProcessLookupError):  # not a pid, or a run that died: tidy it away
                pid_file.unlink(missing_ok=True)
            except PermissionError:  # another user's live run
                live += 1
        return live


def write_json(path, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_torch(path, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_torch(path, what: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing, truncated or foreign file: torch raises many kinds
        raise InputError(f"cannot load {what} {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return obj if isinstance(obj, dict) else {}


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def package_versions(env_id: str) -> dict:
    out = {"python": platform.python_version()}
    for package in ("torch", "numpy", *getattr(envs.env_module(env_id), "PINNED_PACKAGES", ())):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def cpu_info() -> dict:
    """The CPU and the kernel set torch picked on it: a run is bit-identical only on the same set (docs/results.md)."""
    model = platform.processor() or None
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    return {"model": model, "torch_capability": torch.backends.cpu.get_cpu_capability()}


def start_run(args, algorithm: str, variant: str, meta: dict, agent_ids: list[int], device) -> tuple[Path, dict, dict | None]:
    """The run folder, its results.json (status running) and, with --resume, the training state to go on from."""
    if args.resume is not None:
        run_dir = Path(args.resume)
        results = json.loads((run_dir / "results.json").read_text())
        state = load_torch(run_dir / "checkpoint.pt", "checkpoint") if (run_dir / "checkpoint.pt").exists() else None
        if state is not None and (state.get("format"), state.get("script")) != (CHECKPOINT_FORMAT, SCRIPT):
            raise InputError(f"{run_dir / 'checkpoint.pt'} is not a {SCRIPT}.py training state; start a new run")
        if state is not None and state["step"] > args.total_steps:
            raise InputError(f"--total-steps {args.total_steps} is below the {state['step']} steps the run has done")
        step = state["step"] if state else 0
        results.update(status="running", error=None, pid=os.getpid(), host=platform.node(), args=asdict(args),
                       evaluations=state["results"]["evaluations"] if state else [],
                       seconds=state["results"]["seconds"] if state else 0.0,
                       final=state["results"]["final"] if state else None,
                       resumed_at_steps=results.get("resumed_at_steps", []) + [step])
    else:
        env_name = args.env_id.replace(":", "-").replace("/", "-")  # minari:mujoco/hopper/medium-v0 is one folder
        run_name = args.run_name or f"{env_name}__{args.exp_name}{variant}__{args.seed}__{int(time.time())}"
        run_dir = Path("runs") / run_name
        if (run_dir / "results.json").exists():
            raise InputError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick another --run-name")
        run_dir.mkdir(parents=True, exist_ok=True)
        state = None
        results = dict(
            schema_version=SCHEMA_VERSION, status="running", error=None, run_name=run_name, script=SCRIPT,
            algorithm=algorithm, env_id=args.env_id, env_kwargs=meta["env_kwargs"],
            dataset=dict(path=meta.get("path"), recipe=meta.get("recipe"), fingerprint=meta.get("content_sha256")),
            seed=args.seed, agent_ids=agent_ids, args=asdict(args), git_commit=git_commit(),
            versions=package_versions(args.env_id), device=str(device), threads=args.threads or "auto",
            host=platform.node(), cpu=cpu_info(), pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
            resumed_at_steps=[], evaluations=[], final=None, seconds=0.0,
        )
    write_results(run_dir, results)
    print(f"results: {run_dir / 'results.json'}")
    return run_dir, results, state


def write_results(run_dir: Path, results: dict) -> None:
    results["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(run_dir / "results.json", results)


@contextlib.contextmanager
def recorded(run_dir: Path, results: dict):
    """results.json says how the block ended: complete, interrupted (Ctrl-C, SIGTERM) or failed (with the error).
    A SIGKILL leaves "running" with a dead pid; --resume continues from the last checkpoint."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        write_results(run_dir, results)
        raise
    except BaseException as e:
        results.update(status="failed", error=f"{type(e).__name__}: {e}")
        write_results(run_dir, results)
        raise
    else:
        results["status"] = "complete"
        write_results(run_dir, results)
        print(f"results: {run_dir / 'results.json'}")
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_agent_checkpoints(paths, env_id: str, env_kwargs: dict, n_agents: int) -> list[dict]:
    """--checkpoints: one file per agent, in agent order, each saved by this script for this env and agent."""
    if len(paths) != n_agents:
        raise InputError(f"--checkpoints needs one file per agent ({n_agents} for {env_id}), got {len(paths)}")
    checkpoints = []
    for i, path in enumerate(paths):
        ckpt = load_torch(path, "checkpoint")
        if (ckpt.get("format"), ckpt.get("script")) != (AGENT_FORMAT, SCRIPT):
            raise InputError(f"{path} is not an agent checkpoint of {SCRIPT}.py (save one with --save-model)")
        if (ckpt.get("env_id"), ckpt.get("env_kwargs"), ckpt.get("agent_id")) != (env_id, env_kwargs, i):
            raise InputError(f"{path} holds agent {ckpt.get('agent_id')} of {ckpt.get('env_id')} {ckpt.get('env_kwargs')}, "
                             f"expected agent {i} of {env_id} {env_kwargs}")
        checkpoints.append(ckpt)
    return checkpoints


def save_agent_checkpoints(run_dir: Path, agent_ids: list[int], env_kwargs: dict, args, tensors: list[dict]) -> None:
    """--save-model: one file per agent, loadable alone (`--checkpoints`)."""
    for agent_id, agent_tensors in zip(agent_ids, tensors):
        path = run_dir / f"agent_{agent_id}.pt"
        save_torch(path, dict(format=AGENT_FORMAT, script=SCRIPT, agent_id=agent_id, env_id=args.env_id,
                              env_kwargs=env_kwargs, args=asdict(args), **agent_tensors))
        print(f"saved {path}")


if __name__ == "__main__":
    args = parse_args()
    if args.env_id not in mamujoco.TASKS:
        raise InputError(f"mabcq_continuous.py runs on multi-agent MuJoCo ({', '.join(mamujoco.TASKS)}), not {args.env_id}")
    if args.epsilon is None:
        args.epsilon = PRESETS[args.env_id]["epsilon"]
    if args.ddpg or args.behavior:  # Table 5's DDPG and Behavior rows modify no transition probability
        args.no_vd = args.no_tn = True
    check_args(args)
    algorithm_name, variant = algorithm(args)
    device = pick_device(args.cuda)
    if args.track:
        try:
            import wandb
        except ImportError:
            raise InputError("--track needs wandb: pip install wandb") from None

    # the environment and the agents this process trains; the evaluation length is no dataset option
    eval_kwargs = {"eval_episode_len": args.eval_episode_len}
    env = envs.make(args.env_id, **eval_kwargs)
    full_env_kwargs, _ = envs.resolve(args.env_id, eval_kwargs)
    data_env_kwargs, _ = envs.resolve(args.env_id, {})
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
    agent_ids = list(range(n_agents)) if args.checkpoints else parse_agent_ids(args.agent_ids, n_agents)

    if args.checkpoints:  # evaluate a team assembled from separately trained agents: their own settings win
        ckpts = load_agent_checkpoints(args.checkpoints, args.env_id, data_env_kwargs, n_agents)
        shared = ("ddpg", "behavior", "hidden_dim", "vae_hidden_dim", "vae_latent_dim", "phi", "lmbda", "act_samples")
        if len({tuple(tuple(v) if isinstance(v, list) else v for v in (c["args"][k] for k in shared)) for c in ckpts}) > 1:
            raise InputError(f"the checkpoints differ in one of {', '.join(shared)}; a team needs one kind of network and policy")
        args = replace(args, **{k: ckpts[0]["args"][k] for k in shared})
        generators = agent_generators(args.seed, agent_ids, device)
        nets = make_networks(args, obs_dim, act_dim, generators, device)
        g1 = None if args.ddpg else make_generative_models(args, obs_dim, act_dim, generators, device)[0]
        obs_mean = torch.zeros(n_agents, 1, obs_dim, device=device)
        obs_std = torch.ones(n_agents, 1, obs_dim, device=device)
        for i, ckpt in enumerate(ckpts):
            for k, m in [*nets.items(), *([("g1", g1)] if g1 is not None else [])]:
                load_agent_state(m, i, n_agents, ckpt[k])
            obs_mean[i], obs_std[i] = ckpt["obs_mean"], ckpt["obs_std"]
        run_dir, results, _ = start_run(args, "team of checkpoints", "-team", {"env_kwargs": full_env_kwargs}, agent_ids, device)
        results["checkpoints"] = [dict(path=str(p), algorithm=algorithm(replace(args, **{k: c["args"][k] for k in ("no_vd", "no_tn")}))[0],
                                       args=c["args"]) for p, c in zip(args.checkpoints, ckpts)]
        with recorded(run_dir, results):
            results["final"] = evaluate(env, team_policy(args, nets, g1, args.seed, device), nets.get("critic"), obs_mean, obs_std,
                                        args.eval_episodes, args.gamma, args.lmbda, args.seed, device)
        print(f"team of {n_agents} checkpoints: normalized score {results['final']['normalized_score']:.1f}")
        raise SystemExit(0)

    # data: agent i reads only its own file
    recipe = {"n_transitions": args.n_transitions, "episode_len": args.episode_len, "behavior_dir": args.behavior_dir}
    _, agent_data, meta = datasets.load(args.env_id, data_env_kwargs, recipe, args.dataset_dir, agent_ids)
    meta["path"] = str(datasets.dataset_path(args.dataset_dir, args.env_id, meta["env_kwargs"], meta["recipe"]))

    # the run folder: nothing is written before this point
    run_dir, results, state = start_run(args, algorithm_name, variant, {**meta, "env_kwargs": full_env_kwargs}, agent_ids, device)
    if args.track:
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=results["run_name"], save_code=True, resume="allow")
    writer = SummaryWriter(str(run_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))
    cores = CoreShare(args.threads)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_flush_denormal(True)  # Adam's second moments decay into denormals, which are ~10x slower on CPU
    keep_freed_memory()

    with recorded(run_dir, results):
        generators = agent_generators(args.seed, agent_ids, device)
        data = stack_agent_data([agent_data[i] for i in agent_ids], args.normalize_obs, device)
        # states from the union of all agents' data, seen through each agent's eyes
        union = np.concatenate([agent_data[i]["states"] for i in agent_ids])
        union = union[np.random.default_rng(args.seed).choice(len(union), min(args.analysis_states, len(union)), replace=False)]
        analysis_obs = torch.as_tensor(np.stack([env.observe(union)[i] for i in agent_ids]), device=device)
        analysis_obs = (analysis_obs - data["obs_mean"]) / data["obs_std"]

        # ALGO LOGIC: Algorithm 1, lines 2-4: G1 (and G2 for lambda_tn) are fitted before Q-learning; lambda_tn is fixed
        g1, lambda_tn = None, None
        if not args.ddpg:
            g1, g2 = make_generative_models(args, obs_dim, act_dim, generators, device)
            if state is None:
                lambda_tn, results["vae"] = fit_generative_models(g1, g2, data, args, generators, device, fit_g2=not args.no_tn,
                                                                  on_step=cores.update)
                for k, v in results["vae"].items():
                    writer.add_scalar(k, v, 0)
            del g2  # lambda_tn holds all that G2 is for
        if state is not None and state["lambda_tn"] is not None:
            lambda_tn = state["lambda_tn"].to(device)
        if lambda_tn is None:
            lambda_tn = torch.ones(data["rewards"].shape, device=device)
        elif not args.no_tn:
            if state is None:  # before the cap: what to set against the paper's [0.2, 1.4]
                results["lambda_tn"] = lambda_tn_summary(lambda_tn, data["size"], agent_ids, args.tn_max)
                for agent, stats in results["lambda_tn"].items():
                    print(f"agent {agent}: lambda_tn " + ", ".join(f"{k} {v:.3g}" for k, v in stats.items()))
            lambda_tn = lambda_tn.clamp(max=args.tn_max)

        nets = make_networks(args, obs_dim, act_dim, generators, device)  # Algorithm 1, line 3
        targets = {f"{k}_target": copy.deepcopy(m) for k, m in nets.items()}
        optimizers = {}
        if nets:
            policy = nets["actor" if args.ddpg else "xi"]
            optimizers["critic"] = torch.optim.Adam(nets["critic"].parameters(), lr=args.q_learning_rate, fused=True)
            optimizers["policy"] = torch.optim.Adam(policy.parameters(), lr=args.xi_learning_rate, fused=True)
        if args.train_generator:
            optimizers["g1"] = torch.optim.Adam(g1.parameters(), lr=args.g_learning_rate, fused=True)
        modules = {**nets, **targets, **({"g1": g1} if g1 is not None else {})}
        start_step, chunk, logs, resumed_train_seconds = 0, None, {}, 0.0
        if state is not None:  # go on exactly where the checkpoint left off
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            for k, o in optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            for g, g_state in zip(generators, state["generators"]):
                g.set_state(g_state)
            start_step, logs, resumed_train_seconds = state["step"], state["logs"], state["train_seconds"]
            chunk = {k: v.to(device) for k, v in state["rng_chunk"].items()} if state["rng_chunk"] else None
            print(f"resumed at step {start_step}")

        def save_state(step):
            save_torch(run_dir / "checkpoint.pt", dict(
                format=CHECKPOINT_FORMAT, script=SCRIPT, step=step, args=asdict(args),
                modules={k: m.state_dict() for k, m in modules.items()},
                optimizers={k: o.state_dict() for k, o in optimizers.items()},
                generators=[g.get_state() for g in generators], lambda_tn=None if args.no_tn else lambda_tn.cpu(),
                rng_chunk=chunk, logs=logs, train_seconds=train_seconds + time.time() - tick,
                results={k: results[k] for k in ("evaluations", "final", "seconds")},
            ))

        def evaluate_and_record(step):
            entry = dict(step=step, seconds=round(results["seconds"] + time.time() - session_start, 1))
            previous = results["evaluations"][-1] if results["evaluations"] else dict(step=0, train_seconds=0.0)
            entry["train_seconds"] = previous["train_seconds"] + train_seconds
            entry["updates_per_second"] = (step - previous["step"]) / max(train_seconds, 1e-9)
            entry["ms_per_update"] = 1000 / max(entry["updates_per_second"], 1e-9)  # Table 11: one update of the whole team
            act, critic = team_policy(args, nets, g1, args.seed + step, device), nets.get("critic")
            if len(agent_ids) > 1 and critic is not None:
                entry["value_difference"] = value_difference(act, critic, analysis_obs, args.lmbda)
            if len(agent_ids) == n_agents:
                entry.update(evaluate(env, team_policy(args, nets, g1, args.seed + step, device), critic, data["obs_mean"],
                                      data["obs_std"], args.eval_episodes, args.gamma, args.lmbda, args.seed + step, device))
            entry.update({k.split("/")[1]: v for k, v in logs.items() if k.startswith(("weights/", "losses/"))})
            for k, v in entry.items():
                if k not in ("step", "seconds", "train_seconds") and not k.startswith(("lambda_", "td_", "policy_", "q_", "vae_")):
                    writer.add_scalar(f"eval/{k}", v, step)
            results["evaluations"].append(entry)
            results["final"] = entry
            line = f"step {step}"
            if "normalized_score" in entry:
                line += f" | normalized score {entry['normalized_score']:.1f} ± {entry['normalized_score_std']:.1f}"
                line += f" | return {entry['team_return']:.0f}"
            if "extrapolation_error" in entry:
                line += f" | extrapolation error {entry['extrapolation_error']:.1f}"
            if "value_difference" in entry:
                line += f" | value difference {entry['value_difference']:.2f}"
            if "lambda_vd_mean" in entry:
                line += f" | lambda_vd {entry['lambda_vd_mean']:.3f}"
            tqdm.write(line)

        session_start, train_seconds, tick = time.time(), resumed_train_seconds, time.time()
        if args.total_steps == 0:  # nothing to learn: evaluate the untrained team once
            evaluate_and_record(0)
        progress = tqdm(range(start_step + 1, args.total_steps + 1), desc="training", unit=" steps",
                        initial=start_step, total=args.total_steps)
        latent, lambda_vd, losses = args.vae_latent_dim, None, {}
        for global_step in progress:
            cores.update()
            if (global_step - 1) % RNG_CHUNK == 0:  # one draw per agent for RNG_CHUNK steps: per-step draws cost more
                chunk = dict(idx=sample_indices(data["size"], (RNG_CHUNK, args.batch_size), generators))
            idx = chunk["idx"][:, (global_step - 1) % RNG_CHUNK]
            batch = {k: gather(data[k], idx) for k in ("obs", "actions", "rewards", "next_obs", "dones")}
            batch["lambda_tn"] = gather(lambda_tn, idx)

            # ALGO LOGIC: one update of every agent, by the row of Table 5 the flags pick
            if args.train_generator:  # BCQ's code: the generator keeps learning the data (unweighted), first
                g1_loss = g1.loss(batch["obs"], batch["actions"], randn(generators, args.batch_size, latent, device=device))
                optimizers["g1"].zero_grad(set_to_none=True)
                g1_loss.sum().backward()  # sum over agents: each agent's gradient is its own loss's
                optimizers["g1"].step()
                losses["losses/vae_loss"] = g1_loss.mean().item  # .item() only when logged: a sync per step costs on GPU
            if args.ddpg:
                critic_loss, policy_loss, q = ddpg_losses(nets["actor"], targets["actor_target"], nets["critic"],
                                                          targets["critic_target"], batch, args.gamma)
                for name, loss in (("critic", critic_loss), ("policy", policy_loss)):
                    optimizers[name].zero_grad(set_to_none=True)
                    loss.sum().backward()
                    optimizers[name].step()
            elif not args.behavior:  # BCQ, weighted by lambda_tn * lambda_vd
                noise = randn(generators, args.batch_size * (args.n_samples + 1), latent, device=device)
                target_noise, xi_noise = noise.split([args.batch_size * args.n_samples, args.batch_size], 1)
                critic_loss, q, weight, lambda_vd = bcq_critic_loss(
                    nets["critic"], targets["critic_target"], targets["xi_target"], g1, batch, target_noise,
                    args.gamma, args.lmbda, args.epsilon, not args.no_vd)
                optimizers["critic"].zero_grad(set_to_none=True)
                critic_loss.sum().backward()
                optimizers["critic"].step()
                policy_loss = bcq_perturbation_loss(nets["xi"], nets["critic"], g1, batch["obs"], xi_noise, weight)
                optimizers["policy"].zero_grad(set_to_none=True)
                policy_loss.sum().backward()
                optimizers["policy"].step()
            if nets:
                for k in nets:
                    soft_update(targets[f"{k}_target"], nets[k], args.tau)
                losses.update({"losses/td_loss": critic_loss.mean().item, "losses/policy_loss": policy_loss.mean().item,
                               "losses/q_values": q.mean().item})

            evaluate_now = global_step % args.eval_freq == 0 or global_step == args.total_steps
            if global_step % 1000 == 0 or evaluate_now:
                logs = {k: v() for k, v in losses.items()}
                if not args.no_tn:
                    logs.update({f"weights/lambda_tn_{f}": getattr(batch["lambda_tn"], f)().item() for f in ("mean", "min", "max")})
                if lambda_vd is not None:
                    live = lambda_vd[~batch["dones"]] if (~batch["dones"]).any() else lambda_vd  # terminal ones are 1
                    logs.update({f"weights/lambda_vd_{f}": getattr(live, f)().item() for f in ("mean", "min", "max")})
                    logs["weights/lambda_vd_clipped"] = ((live - 1).abs() >= args.epsilon - 1e-6).float().mean().item()
                for k, v in logs.items():
                    writer.add_scalar(k, v, global_step)
                writer.add_scalar("charts/updates_per_second", (global_step - start_step) / (time.time() - session_start), global_step)

            checkpoint_now = evaluate_now if args.checkpoint_freq == 0 else global_step % args.checkpoint_freq == 0
            if evaluate_now or checkpoint_now:
                train_seconds += time.time() - tick
                if evaluate_now:
                    evaluate_and_record(global_step)
                    train_seconds = 0.0
                results["seconds"] += time.time() - session_start
                session_start = time.time()
                if checkpoint_now or global_step == args.total_steps:
                    save_state(global_step)
                write_results(run_dir, results)
                tick = time.time()

        if args.total_steps == 0:
            results["seconds"] += time.time() - session_start
            save_state(0)
        if args.save_model:
            save_agent_checkpoints(run_dir, agent_ids, data_env_kwargs, args, [
                dict(**{k: agent_state(m, e, len(agent_ids)) for k, m in [*nets.items(), *([("g1", g1)] if g1 is not None else [])]},
                     obs_mean=data["obs_mean"][e].cpu(), obs_std=data["obs_std"][e].cpu())
                for e in range(len(agent_ids))])
    writer.close()
