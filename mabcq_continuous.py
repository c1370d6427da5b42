# docs and experiment results: docs/mabcq_continuous.md
"""MABCQ (continuous): BCQ (Fujimoto, Meger & Precup, 2019) with the value deviation and transition normalisation
weights of "Offline Decentralized Multi-Agent Reinforcement Learning" (Jiang & Lu, ECAI 2023, arXiv 2108.01832),
Section 3.4 and Algorithm 1 -- and every other row of its Table 5.

Every agent i is an independent offline learner on its own dataset B_i of (s, a_i, r, s', done): its own G1 and G2
(conditional VAEs), perturbation model xi, twin critics and optimiser state; no parameter sharing, no communication.
The N learners are one batched ensemble (a leading agent dimension on every weight), mathematically N separate learners
(tests/test_mabcq_continuous.py); the run contract and per-agent sampling are envs/run.py's and envs/dataset.py's.

    python mabcq_continuous.py --env-id hopper-3x1                      # MABCQ
    python mabcq_continuous.py --env-id hopper-3x1 --no-tn              # BCQ w/ lambda_vd (--no-vd: w/ lambda_tn)
    python mabcq_continuous.py --env-id hopper-3x1 --no-vd --no-tn      # BCQ
    python mabcq_continuous.py --env-id hopper-3x1 --ddpg               # DDPG: no generator, no bound, no weights
    python mabcq_continuous.py --env-id hopper-3x1 --behavior           # Behavior: G1's decoder acts, no Q
    python mabcq_continuous.py --env-id vault:og_marl/gymnasium_mamujoco/2halfcheetah/Replay   # an OG-MARL vault
"""

import copy
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

import envs
from envs import dataset as datasets
from envs import run as contract
from envs.dataset import gather, randn, sample_indices

SCRIPT = "mabcq_continuous"


@dataclass
class Args(contract.RunArgs):
    # Algorithm specific arguments (the generic ones, --seed, --cuda, --track, ..., are contract.RunArgs')
    # the environment and its dataset
    env_id: str = "hopper-3x1"
    """halfcheetah-2x3, walker2d-2x3, hopper-3x1, ant-2x4, an OG-MARL vault:<id> or a user's data:<folder>"""
    obs: str | None = None
    """vault:<id>: `local` (default), `padded` (OG-MARL's) or `central` (one agent: the state and the joint action)"""
    eval_episode_len: int | None = None
    """steps of an evaluation episode (None: the env's 1000); the dataset does not depend on it"""
    n_transitions: int | None = None
    """dataset recipe: transitions per agent (None: the recipe's 1e6)"""
    episode_len: int | None = None
    """dataset recipe: steps of a dataset episode before its time limit (None: the recipe's 1000)"""
    behavior_dir: str | None = None
    """dataset recipe: folder of the SAC behaviour actors, <env-id>/{early,intermediate,expert}.pt (None: shipped)"""
    # training
    total_steps: int = 50_000
    """gradient steps per agent (50k: the reduced scale of docs/mabcq_continuous.md)"""
    eval_freq: int = 5_000
    """evaluate the team every this many steps"""
    eval_episodes: int = 10
    """evaluation episodes per evaluation (run side by side)"""
    batch_size: int = 1024
    """the batch size of each agent, also of the G1/G2 fit (ECAI Appendix B on MuJoCo; BCQ's code: 100)"""
    hidden_dim: tuple[int, ...] = (64, 64)
    """hidden widths of the critics, xi and the DDPG actor; one number: two layers (ECAI: 64 64; BCQ's code: 400 300)"""
    vae_hidden_dim: tuple[int, ...] | None = None
    """hidden widths of G1's and G2's encoders and decoders (None: --hidden-dim; BCQ's code: 750 750)"""
    q_learning_rate: float = 1e-3
    """the learning rate of the critics (ECAI Table 12 and BCQ's code)"""
    xi_learning_rate: float = 1e-4
    """the learning rate of xi, and of the DDPG row's actor (ECAI Table 12; BCQ's code: 1e-3)"""
    g_learning_rate: float = 1e-3
    """the learning rate of G1 and G2 (BCQ's code; ECAI Table 12's 1e-4 leaves G1 unfit after 10k steps: docs)"""
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
    """G1's and G2's loss: the squared error's mean over action dims + this x the KL's over latent dims (BCQ: 0.5)"""
    vae_steps: int = 10_000
    """gradient steps of the G1 and G2 fit before Q-learning (Algorithm 1, line 4), which give lambda_tn once"""
    train_generator: bool = False
    """keep training G1 (unweighted) during Q-learning, as BCQ's code does (default: fitted, then frozen)"""
    normalize_obs: bool = False
    """normalise observations with the mean/std of the agent's own dataset (BCQ has none)"""
    epsilon: float | None = None
    """optimism level: lambda_vd is clipped to [1 - epsilon, 1 + epsilon] (None: the task's preset, PRESETS)"""
    no_vd: bool = False
    """switch off the value deviation weight lambda_vd"""
    vd_terminal: Literal["one", "formula"] = "one"
    """lambda_vd of a terminal transition: 1, or the paper's expression with V(s') = 0 (down-weights falls if E > 0)"""
    no_tn: bool = False
    """switch off the transition normalisation weight lambda_tn (G2 is then not fitted)"""
    tn_max: float = 10.0
    """lambda_tn is capped at this (>= 1): the paper finds [0.2, 1.4] for almost all samples, rare ones reach 1e4"""
    ddpg: bool = False
    """Table 5's DDPG row: a deterministic tanh actor maximising Q, one critic, no generator, no bound, no weights"""
    behavior: bool = False
    """Table 5's Behavior row: act with G1's decoder at z = 0; no critic, no Q-learning"""
    analysis_states: int = 10_000
    """states sampled from the union of the agents' data for the value-difference metric"""


# the paper's optimism level epsilon per task (Appendix B), tuned by the authors per robot (vaults: their robot's)
PRESETS = {"halfcheetah-2x3": dict(epsilon=0.80), "walker2d-2x3": dict(epsilon=0.48), "hopper-3x1": dict(epsilon=0.80),
           "ant-2x4": dict(epsilon=0.64)}


def check_args(args: Args) -> None:
    """Every flag's range, before anything is read or written (dataset options: envs.resolve)."""
    if args.ddpg and (args.behavior or args.train_generator):
        raise envs.InputError("--ddpg is a row without G1: it takes neither --behavior nor --train-generator")
    contract.check_ranges(
        args, at_least_zero=("vae_steps",),
        positive=("hidden_dim", "vae_hidden_dim", "batch_size", "n_samples", "act_samples", "vae_latent_dim",
                  "analysis_states", "q_learning_rate", "xi_learning_rate", "g_learning_rate", "vae_kl_weight"),
        intervals={"epsilon": ("[0, 1]", "lambda_vd is clipped to [1 - eps, 1 + eps]"), "tau": ("(0, 1]", ""),
                   "gamma": ("(0, 1)", ""), "lmbda": ("[0, 1]", ""), "phi": ("(0, 1]", ""),
                   "tn_max": ("[1, inf)", "a cap of 1 leaves no lambda_tn above 1")})


def algorithm(args: Args) -> tuple[str, str]:
    """The paper's name of what the flags make (results.json `algorithm`, a row of Table 5) and the run-name variant."""
    suffix = "-train_generator" if args.train_generator else ""
    if args.ddpg or args.behavior:
        return ("DDPG", "-ddpg") if args.ddpg else ("Behavior", "-behavior" + suffix)
    variant = "".join(f"-{flag}" for flag in ("no_vd", "no_tn") if getattr(args, flag)) + suffix
    weights = [w for w, off in (("lambda_vd", args.no_vd), ("lambda_tn", args.no_tn)) if not off]
    return ("MABCQ" if len(weights) == 2 else "BCQ" + (f" w/ {weights[0]}" if weights else "")), variant


# ALGO LOGIC: the networks, one member per agent (or per agent and twin)
class VectorizedLinear(nn.Module):
    """Independent linear layers, one per ensemble member: weight [members, in, out], input x [members, rows, in].
    `twins` members per agent are stored twin-major (member k * n_agents + i): the first n_agents are every agent's
    first twin. With `state` [members, batch, s] the input is (state, x); for rows = n * batch (n samples of each state
    side by side: BCQ's target) the state's product is taken once, not n times. Layouts by size: docs, Throughput."""

    def __init__(self, in_features, out_features, generators, twins=1, device=None):
        super().__init__()
        bound = 1 / np.sqrt(in_features)  # nn.Linear's default init, drawn from each agent's own stream (twin-major)
        draws = [(torch.rand(in_features, out_features, generator=g, device=device),
                  torch.rand(1, out_features, generator=g, device=device)) for _ in range(twins) for g in generators]
        self.weight = nn.Parameter((torch.stack([w for w, _ in draws]) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.stack([b for _, b in draws]) * 2 - 1) * bound)

    def forward(self, x, members=None, state=None):
        weight, bias = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        if state is not None and state.shape[1] < x.shape[1]:
            s, n = state.shape[2], x.shape[1] // state.shape[1]
            return torch.baddbmm(bias, state, weight[:, :s]).repeat_interleave(n, 1).baddbmm_(x, weight[:, s:])
        x = x if state is None else torch.cat([state, x], -1)
        if weight.shape[2] > 8 or x[0].numel() < 2**14:  # wide layers, small inputs: one batched product
            return torch.baddbmm(bias, x, weight)
        if weight.shape[2] == 1:  # one column: 4-7x faster one member at a time
            return torch.stack([torch.addmm(*member) for member in zip(bias, x, weight)])
        return torch.baddbmm(bias, x, weight.mT.contiguous().mT)  # other narrow layers: 2-3x faster, weight transposed


class MLP(nn.Module):
    """ReLU MLP of VectorizedLinear layers with the given hidden widths; `members`, `state`: VectorizedLinear."""

    def __init__(self, in_dim, out_dim, hidden_dim, generators, twins=1, device=None):
        super().__init__()
        hidden = tuple(hidden_dim) * 2 if len(hidden_dim) == 1 else tuple(hidden_dim)  # 64: (64, 64), as elsewhere
        sizes = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(VectorizedLinear(i, o, generators, twins, device) for i, o in zip(sizes, sizes[1:]))

    def forward(self, x, members=None, state=None):
        for layer in self.layers[:-1]:
            x, state = torch.relu_(layer(x, members, state)), None
        return self.layers[-1](x, members, state)


class Perturbation(nn.Module):
    """BCQ's perturbation model xi_phi(s, a) = a + Phi * tanh(MLP(s, a)), clipped to the action range [-1, 1]."""

    def __init__(self, obs_dim, act_dim, hidden_dim, phi, generators, device=None):
        super().__init__()
        self.net, self.phi = MLP(obs_dim + act_dim, act_dim, hidden_dim, generators, device=device), phi

    def forward(self, obs, act):  # obs [n_agents, batch, *], act [n_agents, n * batch, *] (n per state) -> like act
        return (act + self.phi * torch.tanh(self.net(act, state=obs))).clamp(-1, 1)


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
        self.net, self.twins = MLP(obs_dim + act_dim, 1, hidden_dim, generators, twins=twins, device=device), twins

    def forward(self, obs, act):  # obs [n_agents, batch, *], act [n_agents, rows, *] -> [twins, n_agents, rows]
        return self.net(act.repeat(self.twins, 1, 1), state=obs.repeat(self.twins, 1, 1)).view(-1, *act.shape[:2])

    def q1(self, obs, act):  # the first twin only: [n_agents, rows]
        return self.net(act, slice(0, act.shape[0]), state=obs).view(act.shape[:2])


class ConditionalVAE(nn.Module):
    """E(mu, sigma | cond, a) and D(a | cond, z), one per agent; cond is s (G1) or (s, s') (G2)."""

    def __init__(self, cond_dim, act_dim, latent_dim, hidden_dim, generators, device=None, kl_weight=0.5):
        super().__init__()
        self.encoder = MLP(cond_dim + act_dim, 2 * latent_dim, hidden_dim, generators, device=device)
        self.decoder = MLP(cond_dim + latent_dim, act_dim, hidden_dim, generators, device=device)
        self.latent_dim, self.kl_weight = latent_dim, kl_weight

    def encode(self, cond, act):
        mean, log_std = self.encoder(act, state=cond).split(self.latent_dim, -1)
        return mean, log_std.clamp(-4, 15)  # BCQ's clamp, for numerical stability

    def decode(self, cond, noise=None):
        """Actions in [-1, 1] from the decoder: z = standard normal `noise` [n_agents, n * batch, latent] (n per
        state) clipped to [-0.5, 0.5] as in BCQ, or z = 0 (the latent prior's mode) without it."""
        z = cond.new_zeros(*cond.shape[:-1], self.latent_dim) if noise is None else noise.clamp(-0.5, 0.5)
        return torch.tanh(self.decoder(z, state=cond))

    def loss(self, cond, act, noise):
        """Per-agent loss [n_agents]: BCQ's reconstruction MSE + kl_weight x KL, means over the k action dims and the d
        latent dims: the latent pays only if 2 v / k > kl_weight / d, v the action's variance per dim given the state
        (docs/mabcq_continuous.md)."""
        mean, log_std = self.encode(cond, act)
        z = mean + log_std.exp() * noise
        recon = torch.tanh(self.decoder(z, state=cond))
        recon_loss = ((recon - act) ** 2).mean((1, 2))
        kl = -0.5 * (1 + 2 * log_std - mean**2 - (2 * log_std).exp()).mean((1, 2))
        return recon_loss + self.kl_weight * kl


def make_networks(args, obs_dim, act_dim, generators, device) -> dict:
    """The row's other networks, from each agent's own stream: BCQ twin critics and xi, DDPG a critic and an actor."""
    if args.behavior:
        return {}
    if args.ddpg:
        return dict(critic=Critics(obs_dim, act_dim, args.hidden_dim, generators, twins=1, device=device),
                    actor=DeterministicActor(obs_dim, act_dim, args.hidden_dim, generators, device=device))
    return dict(critic=Critics(obs_dim, act_dim, args.hidden_dim, generators, twins=2, device=device),
                xi=Perturbation(obs_dim, act_dim, args.hidden_dim, args.phi, generators, device))


def make_generative_models(args, obs_dim, act_dim, generators, device) -> list:
    """G1(a | s) and G2(a | s, s'), made together in every row but DDPG: every row of a seed fits the same G1."""
    return [ConditionalVAE(cond_dim, act_dim, args.vae_latent_dim, args.vae_hidden_dim or args.hidden_dim, generators,
                           device, args.vae_kl_weight) for cond_dim in (obs_dim, 2 * obs_dim)]


def value_deviation(next_value, q_sa, rewards, dones, gamma, epsilon, terminal="one"):
    """lambda_vd = clip(1 + (V'(s') - E[V(s')]) / |E[V(s')]|, 1 - eps, 1 + eps), from target networks.

    E[V(s')] is estimated from the sample as (Q(s, a) - r) / gamma. A terminal transition has no next state: its weight
    is 1 (terminal="one"), or the expression with V'(s') = 0 (terminal="formula"), 1 - sign(E) before the clip."""
    expected = (q_sa - rewards) / gamma
    next_value = next_value.masked_fill(dones, 0.0) if terminal == "formula" else next_value
    lambda_vd = (1 + (next_value - expected) / (expected.abs() + 1e-6)).clamp(1 - epsilon, 1 + epsilon)
    return lambda_vd if terminal == "formula" else lambda_vd.masked_fill(dones, 1.0)


def transition_normalization(g1_mean, g2_mean):
    """lambda_tn = rho_N(0,I)(mu1) / rho_N(0,I)(mu2) = exp((|mu2|^2 - |mu1|^2) / 2), ~ 1 / P_B(s'|s, a_i)."""
    return torch.exp(((g2_mean**2).sum(-1) - (g1_mean**2).sum(-1)) / 2)


def soft_clipped(q, lmbda):
    """BCQ's soft clipped double Q, lmbda * min + (1 - lmbda) * max of twins: [twins, ...] -> [...] (DDPG: its Q)."""
    return lmbda * q.min(0).values + (1 - lmbda) * q.max(0).values


def bcq_policy(obs, g1, xi, critic, noise):
    """BCQ's policy (Section 3.4): n actions from G1, perturbed by xi, the one with the highest Q1 (as BCQ's code).
    obs [n_agents, batch, obs_dim], noise [n_agents, batch * n, latent] -> [n_agents, batch, act_dim]."""
    n_agents, batch, _ = obs.shape
    act = xi(obs, g1.decode(obs, noise))  # a_j + xi(s, a_j), a_j ~ G1(s): [n_agents, batch * n, act_dim]
    best = critic.q1(obs, act).view(n_agents, batch, -1).argmax(-1)  # [n_agents, batch]
    act = act.view(n_agents, batch, -1, act.shape[-1])  # [n_agents, batch, n, act_dim]
    return act.gather(2, best[..., None, None].expand(-1, -1, 1, act.shape[-1])).squeeze(2)


def bcq_next_value(next_obs, g1, xi_target, critic_target, noise, lmbda, chunk=256):
    """V'(s') = max_j [lmbda min_k + (1 - lmbda) max_k] Q^_k(s', a_j + xi^(s', a_j)), a_j ~ G1(s'): BCQ's target
    value from the target networks (G1 itself has no target copy, as in BCQ's code), `chunk` states at a time.
    next_obs [n_agents, batch, obs_dim], noise [n_agents, batch * n, latent] -> [n_agents, batch]."""
    n_agents, batch, _ = next_obs.shape
    if batch > chunk:  # the same math, faster: n * chunk rows of activations stay in cache (docs: Throughput)
        return torch.cat([bcq_next_value(s, g1, xi_target, critic_target, z, lmbda, chunk) for s, z in
                          zip(next_obs.split(chunk, 1), noise.split(chunk * (noise.shape[1] // batch), 1))], 1)
    act = xi_target(next_obs, g1.decode(next_obs, noise))  # the n samples of a state side by side
    return soft_clipped(critic_target(next_obs, act), lmbda).view(n_agents, batch, -1).max(-1).values


def bcq_critic_loss(critic, critic_target, xi_target, g1, batch, noise, args):
    """Per-agent TD loss E[lambda_tn * lambda_vd * (Q_k(s, a) - y)^2], summed over the twins (eq. (1)),
    y = r + gamma (1 - done) V'(s'), V' = bcq_next_value. lambda_vd = clip(1 + (V'(s') - E) / |E|) with
    E = (Q^(s, a) - r) / gamma, Q^ the same soft clipped combination of the target critics as V'.
    batch: [n_agents, batch, *] tensors; noise [n_agents, batch * n, latent].
    Returns (loss [n_agents], Q [2, n_agents, batch], weight lambda_tn * lambda_vd [n_agents, batch], lambda_vd)."""
    obs, actions, rewards, dones = batch["obs"], batch["actions"], batch["rewards"], batch["dones"]
    with torch.no_grad():
        next_value = bcq_next_value(batch["next_obs"], g1, xi_target, critic_target, noise, args.lmbda)
        td_target = rewards + args.gamma * (~dones) * next_value
        weight, lambda_vd = batch["lambda_tn"], None
        if not args.no_vd:
            q_sa = soft_clipped(critic_target(obs, actions), args.lmbda)
            lambda_vd = value_deviation(next_value, q_sa, rewards, dones, args.gamma, args.epsilon, args.vd_terminal)
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


# ALGO LOGIC: one update of every agent, one function per row of Table 5 (main picks it once)
def optimize(optimizer, loss):
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()  # sum over agents: each agent's gradient is its own loss's
    optimizer.step()


def bcq_update(batch, nets, targets, optimizers, g1, generators, args):
    """BCQ weighted by lambda_tn * lambda_vd (Algorithm 1, lines 8-12): the critics, then xi against the updated critic.
    Returns (losses to log, lambda_vd or None)."""
    noise = randn(generators, args.batch_size * (args.n_samples + 1), args.vae_latent_dim, device=batch["obs"].device)
    target_noise, xi_noise = noise.split([args.batch_size * args.n_samples, args.batch_size], 1)
    critic_loss, q, weight, lambda_vd = bcq_critic_loss(nets["critic"], targets["critic"], targets["xi"], g1, batch,
                                                        target_noise, args)
    optimize(optimizers["critic"], critic_loss)
    policy_loss = bcq_perturbation_loss(nets["xi"], nets["critic"], g1, batch["obs"], xi_noise, weight)
    optimize(optimizers["policy"], policy_loss)
    return {"losses/td_loss": critic_loss, "losses/policy_loss": policy_loss, "losses/q_values": q}, lambda_vd


def ddpg_update(batch, nets, targets, optimizers, g1, generators, args):
    """Offline DDPG (Table 5's unconstrained row), no weights: one critic, y = r + gamma (1 - done) Q^(s', pi^(s')),
    then the actor, maximising Q(s, pi(s)) of the critic this step updated (as the reference BCQ code's DDPG)."""
    critic, actor = nets["critic"], nets["actor"]
    with torch.no_grad():
        next_value = targets["critic"].q1(batch["next_obs"], targets["actor"](batch["next_obs"]))
        y = batch["rewards"] + args.gamma * (~batch["dones"]) * next_value
    q = critic(batch["obs"], batch["actions"])  # [1, n_agents, batch]
    critic_loss = ((q - y) ** 2).mean(-1).sum(0)
    optimize(optimizers["critic"], critic_loss)
    critic.requires_grad_(False)  # the actor loss trains the actor only
    policy_loss = -critic.q1(batch["obs"], actor(batch["obs"])).mean(-1)
    critic.requires_grad_(True)
    optimize(optimizers["policy"], policy_loss)
    return {"losses/td_loss": critic_loss, "losses/policy_loss": policy_loss, "losses/q_values": q}, None


def behavior_update(*_):  # the Behavior row learns nothing after G1's fit (unless --train-generator)
    return {}, None


def train_generator(update):
    """--train-generator (BCQ's code): G1 keeps learning the data, unweighted, before each update."""
    def update_with_g1(batch, nets, targets, optimizers, g1, generators, args):
        noise = randn(generators, args.batch_size, args.vae_latent_dim, device=batch["obs"].device)
        g1_loss = g1.loss(batch["obs"], batch["actions"], noise)
        optimize(optimizers["g1"], g1_loss)
        losses, lambda_vd = update(batch, nets, targets, optimizers, g1, generators, args)
        return {"losses/vae_loss": g1_loss, **losses}, lambda_vd
    return update_with_g1


def fit_generative_models(g1, g2, data, args, generators, device, fit_g2=True, steps=range):
    """Algorithm 1, line 4: fit G1(a|s) and, for lambda_tn, G2(a|s, s') on each agent's own data; then compute
    lambda_tn once for every transition (both frozen afterwards). Returns (lambda_tn [n_agents, T] or None, logs)."""
    parameters = [*g1.parameters(), *(g2.parameters() if fit_g2 else [])]
    optimizer = torch.optim.Adam(parameters, lr=args.g_learning_rate, fused=True)
    for _ in steps(args.vae_steps):  # steps=run.fit_steps: a progress bar and the run's share of the cores
        idx = sample_indices(data["size"], (args.batch_size,), generators)
        obs, act, next_obs = gather(data["obs"], idx), gather(data["actions"], idx), gather(data["next_obs"], idx)
        noise = randn(generators, 2, args.batch_size, args.vae_latent_dim, device=device)  # drawn for G2 even when off
        loss_g1 = g1.loss(obs, act, noise[:, 0])
        loss_g2 = g2.loss(torch.cat([obs, next_obs], -1), act, noise[:, 1]) if fit_g2 else torch.zeros_like(loss_g1)
        optimize(optimizer, loss_g1 + loss_g2)
    logs = ({"vae/g1_loss": loss_g1.mean().item(), **({"vae/g2_loss": loss_g2.mean().item()} if fit_g2 else {})}
            if args.vae_steps else {})  # no losses without a fit
    lambda_tn, mu_sq = [], torch.zeros(2, device=device)  # sums of |mu1|^2, |mu2|^2 over own rows: ~0 = latent unused
    own = torch.arange(data["obs"].shape[1], device=device) < torch.tensor(data["size"], device=device)[:, None]
    with torch.no_grad():  # 65,536 rows at a time
        chunks = zip(*(x.split(65536, 1) for x in (data["obs"], data["actions"], data["next_obs"], own)))
        for obs, act, next_obs, is_own in chunks:
            mu1, _ = g1.encode(obs, act)
            mu_sq[0] += ((mu1**2).sum(-1) * is_own).sum()
            if fit_g2:
                mu2, _ = g2.encode(torch.cat([obs, next_obs], -1), act)
                mu_sq[1] += ((mu2**2).sum(-1) * is_own).sum()
                lambda_tn.append(transition_normalization(mu1, mu2))
    logs.update({f"vae/mu{k + 1}_sq_norm": mu_sq[k].item() / sum(data["size"]) for k in range(1 + fit_g2)})
    return torch.cat(lambda_tn, 1) if fit_g2 else None, logs


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
    """Run the team's policies `act(obs [n_agents, episodes, obs_dim]) -> actions` in `n_episodes` parallel episodes:
    the team return (undiscounted, first `eval_episode_len` steps), its D4RL-normalised score and, given
    critics, the extrapolation error |(1/N) sum_i Q_i(s, a_i) - G| at the start states (Table 7), Q_i the soft
    clipped value, G the discounted Monte-Carlo return of the team, rolled on past the episode length until
    gamma^t < 0.01 or the episode ends, so that G is not cut short."""
    rng = np.random.default_rng(seed)
    obs = env.reset(n_episodes, rng)
    horizon = max(env.eval_episode_len, int(np.ceil(np.log(0.01) / np.log(gamma))))
    team_return, discounted_return, alive = np.zeros(n_episodes), np.zeros(n_episodes), np.ones(n_episodes, dtype=bool)
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
    out = dict(team_return=float(team_return.mean()), team_return_std=float(team_return.std()))
    if hasattr(env, "normalized_score"):  # D4RL-normalised: the paper's tasks, vaults and data of a known robot
        scores = env.normalized_score(team_return)
        out.update(normalized_score=float(scores.mean()), normalized_score_std=float(scores.std()))
    if critic is not None:
        out.update(extrapolation_error=float(np.abs(q_start - discounted_return).mean()), q_start=float(q_start.mean()),
                   mc_return=float(discounted_return.mean()))
    return out


@torch.no_grad()
def value_difference(act, critic, agent_obs, lmbda):
    """max_i V_i(s) - min_i V_i(s), averaged over states, V_i(s) = Q_i(s, pi_i(s)), Q_i soft clipped (Table 6)."""
    values = soft_clipped(critic(agent_obs, act(agent_obs)), lmbda)  # [n_agents, n_states]
    return float((values.max(0).values - values.min(0).values).mean())


def soft_update(target, source, tau):
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def generator_and_weights(data, args, generators, run, obs_dim, act_dim, device):
    """G1 and lambda_tn of every transition (Algorithm 1, lines 2-4): fitted (G2 too) before Q-learning, or restored;
    ones when switched off or in the DDPG row (no G1); capped at --tn-max, the uncapped spread in results.json."""
    ones = torch.ones(data["rewards"].shape, device=device)
    if args.ddpg:
        return None, ones
    g1, g2 = make_generative_models(args, obs_dim, act_dim, generators, device)
    if run.state is not None:  # G1 is restored with the other modules
        return g1, ones if run.state["lambda_tn"] is None else run.state["lambda_tn"].to(device)
    lambda_tn, run.results["vae"] = fit_generative_models(g1, g2, data, args, generators, device, fit_g2=not args.no_tn,
                                                          steps=run.fit_steps)
    run.scalars(0, run.results["vae"])
    if args.no_tn:
        return g1, ones
    run.results["lambda_tn"] = contract.lambda_tn_summary(lambda_tn, data["size"], run.agent_ids, args.tn_max)
    return g1, lambda_tn.clamp(max=args.tn_max)


def evaluate_checkpoints(args, env, env_kwargs, device) -> None:
    """--checkpoints: a team assembled from separately trained agents, evaluated once; their own settings win."""
    shared = ("ddpg", "behavior", "hidden_dim", "vae_hidden_dim", "vae_latent_dim", "phi", "lmbda", "act_samples")
    ckpts, args = contract.load_agent_checkpoints(args, SCRIPT, env_kwargs, env.n_agents, shared)
    generators = datasets.agent_generators(args.seed, range(len(ckpts)), device)
    dims = (env.obs_dims[0], env.act_dims[0])
    nets = make_networks(args, *dims, generators, device)
    g1 = None if args.ddpg else make_generative_models(args, *dims, generators, device)[0]
    mean, std = contract.load_team(ckpts, {**nets, "g1": g1} if g1 else nets, "obs_mean", "obs_std", device=device)
    contract.evaluate_checkpoints(args, SCRIPT, env_kwargs, ckpts, algorithm, lambda: evaluate(
        env, team_policy(args, nets, g1, args.seed, device), nets.get("critic"), mean, std, args.eval_episodes,
        args.gamma, args.lmbda, args.seed, device), device)


KEYS = ("obs", "actions", "rewards", "next_obs", "dones")  # what an agent's minibatch holds, besides its lambda_tn

if __name__ == "__main__":
    args = contract.parse_args(Args, SCRIPT)
    if args.ddpg or args.behavior:  # Table 5's DDPG and Behavior rows modify no transition probability
        args.no_vd = args.no_tn = True

    # the environment and the agents this process trains; the evaluation length is no dataset option
    env_kwargs, eval_kwargs = {"obs": args.obs}, {"eval_episode_len": args.eval_episode_len}
    env = contract.make_env(SCRIPT, args.env_id, discrete=False, checkpoints=args.checkpoints, needs_states=True,
                            **env_kwargs, **eval_kwargs)
    run_env_kwargs = envs.resolve(args.env_id, {**env_kwargs, **eval_kwargs})[0]
    if args.epsilon is None:
        if getattr(env, "reference_env_id", None) not in PRESETS:
            tuned = ", ".join(f"{robot} {preset['epsilon']}" for robot, preset in PRESETS.items())
            raise envs.InputError(f"{args.env_id}: no preset --epsilon (tuned per robot: {tuned}); pass one")
        args.epsilon = PRESETS[env.reference_env_id]["epsilon"]
    check_args(args)
    algorithm_name, variant = algorithm(args)
    device = contract.pick_device(args.cuda)
    contract.check_wandb(args.track)
    if args.checkpoints:
        evaluate_checkpoints(args, env, envs.resolve(args.env_id, env_kwargs)[0], device)  # the agents' env
        raise SystemExit(0)
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
    agent_ids = contract.parse_agent_ids(args.agent_ids, n_agents)

    # data: agent i reads only its own file
    recipe = {"n_transitions": args.n_transitions, "episode_len": args.episode_len, "behavior_dir": args.behavior_dir}
    _, agent_data, meta = datasets.load(args.env_id, env_kwargs, recipe, args.dataset_dir, agent_ids)
    data_env_kwargs, meta["env_kwargs"] = meta["env_kwargs"], run_env_kwargs  # results.json: the run's env
    run = contract.Run(args, SCRIPT, algorithm_name, variant, meta, agent_ids, device)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_flush_denormal(True)  # Adam's second moments decay into denormals, which are ~10x slower on CPU
    contract.keep_freed_memory()

    with run:
        generators = datasets.agent_generators(args.seed, agent_ids, device)
        data = datasets.stack_agents([agent_data[i] for i in agent_ids], KEYS, device, normalize_obs=args.normalize_obs)
        analysis_obs = datasets.analysis_states(env, agent_data, agent_ids, args.analysis_states, args.seed, device)
        analysis_obs = (analysis_obs - data["obs_mean"]) / data["obs_std"]
        g1, data["lambda_tn"] = generator_and_weights(data, args, generators, run, obs_dim, act_dim, device)

        nets = make_networks(args, obs_dim, act_dim, generators, device)  # Algorithm 1, line 3
        targets = {k: copy.deepcopy(m) for k, m in nets.items()}
        optimizers = {} if args.behavior else {  # the policy: xi, or the DDPG row's actor
            "critic": torch.optim.Adam(nets["critic"].parameters(), lr=args.q_learning_rate, fused=True),
            "policy": torch.optim.Adam(nets["actor" if args.ddpg else "xi"].parameters(), lr=args.xi_learning_rate,
                                       fused=True)}
        if args.train_generator:
            optimizers["g1"] = torch.optim.Adam(g1.parameters(), lr=args.g_learning_rate, fused=True)
        agent = {**nets, "g1": g1} if g1 else nets  # what an agent keeps; the targets are training state
        sampler = datasets.Sampler(data, (*KEYS, "lambda_tn"), args.batch_size, generators)
        run.restore({**agent, **{f"{k}_target": m for k, m in targets.items()}}, optimizers, sampler)
        update = ddpg_update if args.ddpg else behavior_update if args.behavior else bcq_update  # the row of Table 5
        update = train_generator(update) if args.train_generator else update

        def evaluate_team(step):
            with run.evaluation(step) as entry:
                critic, seed = nets.get("critic"), args.seed + step  # each policy call samples from a stream of its own
                if len(agent_ids) > 1 and critic is not None:
                    entry["value_difference"] = value_difference(team_policy(args, nets, g1, seed, device), critic,
                                                                 analysis_obs, args.lmbda)
                if len(agent_ids) == n_agents and getattr(env, "evaluates", True):
                    entry.update(evaluate(env, team_policy(args, nets, g1, seed, device), critic, data["obs_mean"],
                                          data["obs_std"], args.eval_episodes, args.gamma, args.lmbda, seed, device))

        tn_state = None if args.no_tn else data["lambda_tn"]  # what the checkpoint keeps of lambda_tn
        if args.total_steps == 0:  # nothing to learn: evaluate the untrained team once
            evaluate_team(0)
            run.checkpoint(0, force=True, lambda_tn=tn_state)
        for global_step in run.steps():
            batch = sampler.sample(global_step)
            losses, lambda_vd = update(batch, nets, targets, optimizers, g1, generators, args)
            for k in nets:
                soft_update(targets[k], nets[k], args.tau)

            if run.log_due(global_step):
                losses = {k: v.mean().item() for k, v in losses.items()}
                run.log(global_step, {**losses, **contract.weight_logs(batch, lambda_vd, args)})
            if run.eval_due(global_step):
                evaluate_team(global_step)
            run.checkpoint(global_step, lambda_tn=tn_state)

        if args.save_model:
            run.save_agents(data_env_kwargs, agent, obs_mean=data["obs_mean"], obs_std=data["obs_std"])
