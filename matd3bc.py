# docs and experiment results: docs/matd3bc.md
"""MATD3+BC: TD3+BC (Fujimoto & Gu, 2021) with the value deviation and transition
normalisation weights of "Offline Decentralized Multi-Agent Reinforcement Learning"
(Jiang & Lu, ECAI 2023, arXiv 2108.01832).

Every agent i is an independent offline learner on its own dataset B_i of
(o_i, a_i, r, o'_i, done): its own actor, twin critics, two conditional VAEs and
optimiser state; no parameter sharing, no communication. All N learners are stored
as one batched ensemble (a leading agent dimension on every weight) so that one
batched matmul serves all agents; that is mathematically N separate learners, and
tests/test_matd3bc.py checks that no agent's data reaches another agent's gradients.

    python matd3bc.py --env-id dg --epsilon 0.9            # MATD3+BC
    python matd3bc.py --env-id dg --no-vd --no-tn          # TD3+BC baseline
    python matd3bc.py --resume runs/<run_name>             # continue a killed run

Sections: Args -> the algorithm (networks, lambda weights, losses) -> evaluation -> data
plumbing -> the run contract (docs/results.md, the same in every script) -> main.
"""

import atexit
import contextlib
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
    env_id: str = "dg"
    """the environment id (see `envs.REGISTRY`)"""
    obs: str = "full"
    """dg only: `full` (both positions) or `partial` (own position)"""
    partition: str | None = None
    """minari:<id> only: the split of the joints among agents, e.g. `2x3`, or `1x6` for one agent (None: the robot's default)"""
    n_transitions: int | None = None
    """transitions per agent in the dataset (None: the env's recipe default, 1e6 for dg)"""
    dataset_dir: str = datasets.default_dataset_dir()
    """root folder of the datasets (built there if absent; env var ODMARL_DATASET_DIR)"""
    agent_ids: str | None = None
    """comma-separated agents to train, e.g. `0`; only their dataset files are read (None: all)"""
    checkpoints: tuple[str, ...] = ()
    """evaluate a team assembled from these per-agent checkpoints (one per agent, in order) and exit"""
    total_steps: int = 30_000
    """gradient steps per agent (30k: the DG full-observation runs of docs/matd3bc.md; partial used 100k)"""
    eval_freq: int = 5_000
    """evaluate the team every this many steps"""
    eval_episodes: int = 100
    """evaluation episodes per evaluation (run side by side)"""
    batch_size: int | None = None
    """the batch size of each agent (None: the env's preset, PRESETS: 100 on dg and cn, 256 on minari:<id>)"""
    learning_rate: float = 3e-4
    """the learning rate of actors and critics"""
    hidden_dim: int = 256
    """the width of the (hidden, hidden) MLPs"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise"""
    noise_clip: float = 0.5
    """clip of the target policy smoothing noise"""
    policy_freq: int = 2
    """the actor and the targets update every this many critic updates"""
    alpha: float = 2.5
    """TD3+BC's alpha: the Q term is scaled by alpha / mean|Q|"""
    normalize_obs: bool = True
    """normalise observations with the mean/std of the agent's own dataset"""
    epsilon: float = 0.9
    """optimism level: lambda_vd is clipped to [1 - epsilon, 1 + epsilon]"""
    no_vd: bool = False
    """switch off the value deviation weight lambda_vd"""
    no_tn: bool = False
    """switch off the transition normalisation weight lambda_tn"""
    tn_max: float = 10.0
    """lambda_tn is capped at this (>= 1): the paper finds [0.2, 1.4] for almost all samples, but the VAE ratio gives a few rare transitions 1e4 to 1e7 on SMAX"""
    vae_steps: int = 5_000
    """gradient steps of the two conditional VAEs that give lambda_tn (fitted first, then frozen)"""
    vae_batch_size: int = 256
    """the batch size of the VAE fits"""
    vae_learning_rate: float = 1e-3
    """the learning rate of the VAE fits"""
    vae_latent_dim: int = 10
    """the latent size of both VAEs (the paper's "VAE hidden space")"""
    analysis_states: int = 10_000
    """states sampled from the union of the agents' data for the value-difference metric"""


# per-env defaults of the flags left unset (None): the paper's MPE batch (Appendix B) on dg and cn; on a
# D4RL-style Minari dataset TD3+BC's own (Fujimoto & Gu 2021), since the paper gives none for Table 10
MPE = dict(batch_size=100)
PRESETS = {"dg": MPE, "cn": MPE, "minari:": dict(batch_size=256)}


def apply_presets(args: Args) -> None:
    preset = PRESETS["minari:"] if args.env_id.startswith("minari:") else PRESETS.get(args.env_id, MPE)
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_args(args: Args) -> None:
    """Every flag's range, before anything is read or written."""
    if not 0 <= args.epsilon <= 1:
        raise InputError(f"--epsilon must lie in [0, 1] (lambda_vd is clipped to [1 - eps, 1 + eps]), got {args.epsilon}")
    if not args.tn_max >= 1:
        raise InputError(f"--tn-max must be >= 1 (a cap of 1 leaves no lambda_tn above 1), got {args.tn_max}")
    if not 0 < args.tau <= 1:
        raise InputError(f"--tau must lie in (0, 1], got {args.tau}")
    if not 0 < args.gamma < 1:
        raise InputError(f"--gamma must lie in (0, 1), got {args.gamma}")
    for name in ("total_steps", "vae_steps", "checkpoint_freq", "threads", "policy_noise", "noise_clip", "alpha"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("eval_freq", "eval_episodes", "batch_size", "policy_freq", "vae_batch_size", "hidden_dim",
                 "vae_latent_dim", "analysis_states", "learning_rate", "vae_learning_rate"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


def algorithm(args: Args) -> tuple[str, str]:
    """The paper's name of what the flags make (results.json `algorithm`) and the run-name variant."""
    variant = "".join(f"-{flag}" for flag in ("no_vd", "no_tn") if getattr(args, flag))
    weights = [w for w, off in (("lambda_vd", args.no_vd), ("lambda_tn", args.no_tn)) if not off]
    name = "MATD3+BC" if len(weights) == 2 else "TD3+BC" + (f" w/ {weights[0]}" if weights else "")
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


class Actor(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden_dim, generators, device=None):
        super().__init__()
        self.net = MLP(obs_dim, act_dim, hidden_dim, generators, device=device)

    def forward(self, obs):  # [n_agents, batch, obs_dim] -> [n_agents, batch, act_dim] in [-1, 1]
        return torch.tanh(self.net(obs))


class TwinCritic(nn.Module):
    """Both critics of every agent in one ensemble of 2N members."""

    def __init__(self, obs_dim, act_dim, hidden_dim, generators, device=None):
        super().__init__()
        self.net = MLP(obs_dim + act_dim, 1, hidden_dim, generators, twins=2, device=device)

    def forward(self, obs, act):  # [n_agents, batch, *] -> [2, n_agents, batch]
        n, b, _ = obs.shape
        return self.net(torch.cat([obs, act], -1).repeat(2, 1, 1)).view(2, n, b)

    def q1(self, obs, act):  # the first twin only: [n_agents, batch]
        n, b, _ = obs.shape
        return self.net(torch.cat([obs, act], -1), slice(0, n)).view(n, b)


class ConditionalVAE(nn.Module):
    """E(mu, sigma | cond, a) and D(a | cond, z), one per agent; cond is s (G1) or (s, s') (G2)."""

    def __init__(self, cond_dim, act_dim, latent_dim, hidden_dim, generators, device=None):
        super().__init__()
        self.encoder = MLP(cond_dim + act_dim, 2 * latent_dim, hidden_dim, generators, device=device)
        self.decoder = MLP(cond_dim + latent_dim, act_dim, hidden_dim, generators, device=device)
        self.latent_dim = latent_dim

    def encode(self, cond, act):
        mean, log_std = self.encoder(torch.cat([cond, act], -1)).split(self.latent_dim, -1)
        return mean, log_std.clamp(-4, 15)

    def loss(self, cond, act, noise):  # per-agent loss [n_agents]
        mean, log_std = self.encode(cond, act)
        z = mean + log_std.exp() * noise
        recon = torch.tanh(self.decoder(torch.cat([cond, z], -1)))
        recon_loss = ((recon - act) ** 2).mean((1, 2))
        kl = -0.5 * (1 + 2 * log_std - mean**2 - (2 * log_std).exp()).mean((1, 2))
        return recon_loss + 0.5 * kl


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


def td3bc_critic_loss(critic, critic_target, actor_target, batch, noise, args):
    """Per-agent TD loss E[lambda_tn * lambda_vd * (Q(s, a) - y)^2] over both twins (eq. (1)).

    batch: [n_agents, batch, *] tensors; noise: standard normal [n_agents, batch, act_dim]
    for target policy smoothing. Returns (loss [n_agents], Q [2, n_agents, batch],
    weight lambda_tn * lambda_vd [n_agents, batch], lambda_vd or None)."""
    obs, actions, rewards, dones = batch["obs"], batch["actions"], batch["rewards"], batch["dones"]
    with torch.no_grad():
        noise = (noise * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
        next_actions = (actor_target(batch["next_obs"]) + noise).clamp(-1, 1)
        # one target-critic pass over (s', a') and, for lambda_vd, (s, a)
        target_q = critic_target(torch.cat([batch["next_obs"], obs], 1), torch.cat([next_actions, actions], 1))
        next_value, q_sa = target_q.min(0).values.split(obs.shape[1], 1)  # V'(s') and Q(s, a), [n_agents, batch]
        td_target = rewards + args.gamma * (~dones) * next_value
        weight, lambda_vd = batch["lambda_tn"], None
        if not args.no_vd:
            lambda_vd = value_deviation(next_value, q_sa, rewards, dones, args.gamma, args.epsilon)
            weight = weight * lambda_vd
    q = critic(obs, actions)  # [2, n_agents, batch]
    loss = (weight * (q - td_target) ** 2).mean(-1).sum(0)  # [n_agents]: sum of the twins' weighted MSEs
    return loss, q, weight, lambda_vd


def td3bc_actor_loss(actor, critic, batch, weight, args):
    """Per-agent TD3+BC policy loss, each sample weighted by lambda_tn * lambda_vd (eq. (2)):
    E[w * (-alpha / mean|Q| * Q(s, pi(s)) + (pi(s) - a)^2)]. Returns [n_agents]."""
    pi = actor(batch["obs"])
    critic.requires_grad_(False)  # the actor loss trains the actor only
    q_pi = critic.q1(batch["obs"], pi)  # [n_agents, batch]
    critic.requires_grad_(True)
    bc_weight = args.alpha / q_pi.abs().mean(-1, keepdim=True).detach()  # per agent
    return (weight * (-bc_weight * q_pi + ((pi - batch["actions"]) ** 2).mean(-1))).mean(-1)


def fit_lambda_tn(data, args, generators, device, progress=True, on_step=None):
    """Fit G1(a|s) and G2(a|s, s') on each agent's own data, then compute lambda_tn once
    for every transition (the VAEs are frozen afterwards). Returns [n_agents, T] and the logs."""
    n, _, obs_dim = data["obs"].shape
    act_dim = data["actions"].shape[-1]
    g1 = ConditionalVAE(obs_dim, act_dim, args.vae_latent_dim, args.hidden_dim, generators, device)
    g2 = ConditionalVAE(2 * obs_dim, act_dim, args.vae_latent_dim, args.hidden_dim, generators, device)
    optimizer = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=args.vae_learning_rate, fused=True)
    for step in tqdm(range(args.vae_steps), desc="fitting VAEs for lambda_tn", disable=not progress):
        if on_step is not None:  # e.g. the run's share of the cores
            on_step()
        idx = sample_indices(data["size"], (args.vae_batch_size,), generators)
        obs, act, next_obs = gather(data["obs"], idx), gather(data["actions"], idx), gather(data["next_obs"], idx)
        noise = randn(generators, 2, args.vae_batch_size, args.vae_latent_dim, device=device)
        loss_g1 = g1.loss(obs, act, noise[:, 0])
        loss_g2 = g2.loss(torch.cat([obs, next_obs], -1), act, noise[:, 1])
        optimizer.zero_grad(set_to_none=True)
        (loss_g1 + loss_g2).sum().backward()
        optimizer.step()
    lambda_tn = torch.empty(data["obs"].shape[:2], device=device)
    with torch.no_grad():
        for start in range(0, lambda_tn.shape[1], 65536):
            s = slice(start, start + 65536)
            obs, act, next_obs = data["obs"][:, s], data["actions"][:, s], data["next_obs"][:, s]
            mu1, _ = g1.encode(obs, act)
            mu2, _ = g2.encode(torch.cat([obs, next_obs], -1), act)
            lambda_tn[:, s] = transition_normalization(mu1, mu2)
    logs = {"vae/g1_loss": loss_g1.mean().item(), "vae/g2_loss": loss_g2.mean().item()} if args.vae_steps else {}
    return lambda_tn, logs


# ALGO LOGIC: evaluation of the team and the paper's analysis metrics
@torch.no_grad()
def evaluate(env, actor, critic, obs_mean, obs_std, n_episodes, gamma, seed, device):
    """Run the team's deterministic policies in `n_episodes` parallel episodes.

    Returns the team return (undiscounted, first `eval_episode_len` steps) and the
    extrapolation error |(1/N) sum_i Q_i(o_i, pi_i(o_i)) - G| at the start states, G the
    discounted Monte-Carlo return of the team. Envs without terminal states are rolled on
    past the episode length until gamma^t < 0.01, so that G is not cut short."""
    rng = np.random.default_rng(seed)
    obs = env.reset(n_episodes, rng)
    horizon = max(env.eval_episode_len, int(np.ceil(np.log(0.01) / np.log(gamma))))
    team_return, discounted_return = np.zeros(n_episodes), np.zeros(n_episodes)
    alive = np.ones(n_episodes, dtype=bool)
    for t in range(horizon):
        o = (torch.as_tensor(np.stack(obs), device=device) - obs_mean) / obs_std  # [n_agents, episodes, obs_dim]
        act = actor(o)
        if t == 0:
            q_start = critic(o, act).min(0).values.mean(0).cpu().numpy()
        obs, reward, terminated = env.step(list(act.cpu().numpy()))
        if t < env.eval_episode_len:
            team_return += alive * reward
        discounted_return += alive * gamma**t * reward
        alive &= ~terminated
        if not alive.any() and t >= env.eval_episode_len - 1:
            break
    out = dict(
        team_return=float(team_return.mean()),
        team_return_std=float(team_return.std()),
        extrapolation_error=float(np.abs(q_start - discounted_return).mean()),
        q_start=float(q_start.mean()),
        mc_return=float(discounted_return.mean()),
    )
    if hasattr(env, "normalized_score"):  # multi-agent MuJoCo: D4RL-normalised
        scores = env.normalized_score(team_return)
        out.update(normalized_score=float(scores.mean()), normalized_score_std=float(scores.std()))
    return out


@torch.no_grad()
def value_difference(actor, critic, agent_obs):
    """max_i V_i(s) - min_i V_i(s), averaged over states, V_i(s) = Q_i(o_i, pi_i(o_i)) (Table 6)."""
    values = critic(agent_obs, actor(agent_obs)).min(0).values  # [n_agents, n_states]
    return float((values.max(0).values - values.min(0).values).mean())


# TRY NOT TO MODIFY: per-agent data on the device, sampled with each agent's own stream
RNG_CHUNK = 1000


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
    apply_presets(args)
    check_args(args)
    algorithm_name, variant = algorithm(args)
    device = pick_device(args.cuda)
    if args.track:
        try:
            import wandb
        except ImportError:
            raise InputError("--track needs wandb: pip install wandb") from None

    # the environment and the agents this process trains
    if args.env_id != "dg" and args.obs != "full":
        raise InputError(f"--obs only applies to dg; {args.env_id} has one observation")
    if not args.env_id.startswith("minari:") and args.partition is not None:
        raise InputError(f"--partition only applies to minari:<dataset id>; {args.env_id} has its own agents")
    env_kwargs = {"obs": args.obs} if args.env_id == "dg" else {"partition": args.partition}
    env = envs.make(args.env_id, **env_kwargs)
    if env.discrete:
        raise InputError(f"{args.env_id} has discrete actions; matd3bc.py needs continuous ones (use mabcq_discrete.py or macql.py)")
    full_env_kwargs, _ = envs.resolve(args.env_id, env_kwargs)
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
    agent_ids = list(range(n_agents)) if args.checkpoints else parse_agent_ids(args.agent_ids, n_agents)

    if args.checkpoints:  # evaluate a team assembled from separately trained agents: their own settings win
        ckpts = load_agent_checkpoints(args.checkpoints, args.env_id, full_env_kwargs, n_agents)
        if len({c["args"]["hidden_dim"] for c in ckpts}) > 1:
            raise InputError("the checkpoints have different --hidden-dim; a team needs one network size")
        args.hidden_dim = ckpts[0]["args"]["hidden_dim"]
        generators = agent_generators(args.seed, agent_ids, device)
        actor = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
        critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
        obs_mean = torch.zeros(n_agents, 1, obs_dim, device=device)
        obs_std = torch.ones(n_agents, 1, obs_dim, device=device)
        for i, ckpt in enumerate(ckpts):
            load_agent_state(actor, i, n_agents, ckpt["actor"])
            load_agent_state(critic, i, n_agents, ckpt["critic"])
            obs_mean[i], obs_std[i] = ckpt["obs_mean"], ckpt["obs_std"]
        run_dir, results, _ = start_run(args, "team of checkpoints", "-team", {"env_kwargs": full_env_kwargs}, agent_ids, device)
        results["checkpoints"] = [dict(path=str(p), algorithm=algorithm(replace(args, no_vd=c["args"]["no_vd"], no_tn=c["args"]["no_tn"]))[0], args=c["args"])
                                  for p, c in zip(args.checkpoints, ckpts)]
        with recorded(run_dir, results):
            results["final"] = evaluate(env, actor, critic, obs_mean, obs_std, args.eval_episodes, args.gamma, args.seed, device)
        print(f"team of {n_agents} checkpoints: return {results['final']['team_return']:.2f} ± {results['final']['team_return_std']:.2f}")
        raise SystemExit(0)

    # data: agent i reads only its own file
    recipe = {"n_transitions": args.n_transitions}
    env, agent_data, meta = datasets.load(args.env_id, env_kwargs, recipe, args.dataset_dir, agent_ids)
    meta["path"] = str(datasets.dataset_path(args.dataset_dir, args.env_id, meta["env_kwargs"], meta["recipe"]))

    # the run folder: nothing is written before this point
    run_dir, results, state = start_run(args, algorithm_name, variant, meta, agent_ids, device)
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

    with recorded(run_dir, results):
        generators = agent_generators(args.seed, agent_ids, device)
        actor = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
        critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
        data = stack_agent_data([agent_data[i] for i in agent_ids], args.normalize_obs, device)
        # states from the union of all agents' data, seen through each agent's eyes
        union = np.concatenate([agent_data[i]["states"] for i in agent_ids])
        union = union[np.random.default_rng(args.seed).choice(len(union), min(args.analysis_states, len(union)), replace=False)]
        analysis_obs = torch.as_tensor(np.stack([env.observe(union)[i] for i in agent_ids]), device=device)
        analysis_obs = (analysis_obs - data["obs_mean"]) / data["obs_std"]

        # ALGO LOGIC: lambda_tn is fixed per transition, computed once before Q-learning
        if args.no_tn:
            lambda_tn = torch.ones(data["rewards"].shape, device=device)
        elif state is not None:
            lambda_tn = state["lambda_tn"].to(device)
        else:
            lambda_tn, results["vae"] = fit_lambda_tn(data, args, generators, device, on_step=cores.update)
            for k, v in results["vae"].items():
                writer.add_scalar(k, v, 0)
        if state is None and not args.no_tn:  # before the cap: what to set against the paper's [0.2, 1.4]
            results["lambda_tn"] = lambda_tn_summary(lambda_tn, data["size"], agent_ids, args.tn_max)
            for agent, stats in results["lambda_tn"].items():
                print(f"agent {agent}: lambda_tn " + ", ".join(f"{k} {v:.3g}" for k, v in stats.items()))
        lambda_tn = lambda_tn.clamp(max=args.tn_max)

        actor_target = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
        critic_target = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
        actor_target.load_state_dict(actor.state_dict())
        critic_target.load_state_dict(critic.state_dict())
        actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, fused=True)
        modules = dict(actor=actor, critic=critic, actor_target=actor_target, critic_target=critic_target)
        optimizers = dict(actor=actor_optimizer, critic=critic_optimizer)
        start_step, chunk, logs, actor_loss, resumed_train_seconds = 0, None, {}, torch.zeros(len(agent_ids)), 0.0
        if state is not None:  # go on exactly where the checkpoint left off
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            for k, o in optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            for g, g_state in zip(generators, state["generators"]):
                g.set_state(g_state)
            start_step, logs, actor_loss = state["step"], state["logs"], state["policy_loss"]
            resumed_train_seconds = state["train_seconds"]
            chunk = {k: v.to(device) for k, v in state["rng_chunk"].items()} if state["rng_chunk"] else None
            print(f"resumed at step {start_step}")

        def save_state(step):
            save_torch(run_dir / "checkpoint.pt", dict(
                format=CHECKPOINT_FORMAT, script=SCRIPT, step=step, args=asdict(args),
                modules={k: m.state_dict() for k, m in modules.items()},
                optimizers={k: o.state_dict() for k, o in optimizers.items()},
                generators=[g.get_state() for g in generators], lambda_tn=lambda_tn.cpu(), rng_chunk=chunk,
                logs=logs, policy_loss=actor_loss, train_seconds=train_seconds + time.time() - tick,
                results={k: results[k] for k in ("evaluations", "final", "seconds")},
            ))

        def evaluate_and_record(step):
            entry = dict(step=step, seconds=round(results["seconds"] + time.time() - session_start, 1))
            previous = results["evaluations"][-1] if results["evaluations"] else dict(step=0, train_seconds=0.0)
            entry["train_seconds"] = previous["train_seconds"] + train_seconds
            entry["updates_per_second"] = (step - previous["step"]) / max(train_seconds, 1e-9)
            if len(agent_ids) > 1:
                entry["value_difference"] = value_difference(actor, critic, analysis_obs)
            if len(agent_ids) == n_agents:
                entry.update(evaluate(env, actor, critic, data["obs_mean"], data["obs_std"],
                                      args.eval_episodes, args.gamma, args.seed + step, device))
            entry.update({k.split("/")[1]: v for k, v in logs.items() if k.startswith(("weights/", "losses/"))})
            for k, v in entry.items():
                if k not in ("step", "seconds", "train_seconds") and not k.startswith(("lambda_", "td_", "policy_", "q_")):
                    writer.add_scalar(f"eval/{k}", v, step)
            results["evaluations"].append(entry)
            results["final"] = entry
            line = f"step {step}"
            if "team_return" in entry:
                line += f" | team return {entry['team_return']:.2f} ± {entry['team_return_std']:.2f}"
                line += f" | extrapolation error {entry['extrapolation_error']:.2f}"
            if "normalized_score" in entry:
                line += f" | normalized score {entry['normalized_score']:.1f}"
            if "value_difference" in entry:
                line += f" | value difference {entry['value_difference']:.3f}"
            if "lambda_vd_mean" in entry:
                line += f" | lambda_vd {entry['lambda_vd_mean']:.3f}"
            tqdm.write(line)

        session_start, train_seconds, tick = time.time(), resumed_train_seconds, time.time()
        if args.total_steps == 0:  # nothing to learn: evaluate the untrained team once
            evaluate_and_record(0)
        progress = tqdm(range(start_step + 1, args.total_steps + 1), desc="training", unit=" steps",
                        initial=start_step, total=args.total_steps)
        for global_step in progress:
            cores.update()
            # ALGO LOGIC: one TD3+BC update of every agent, weighted by lambda_tn * lambda_vd
            if (global_step - 1) % RNG_CHUNK == 0:  # one draw per agent for RNG_CHUNK steps: per-step draws cost more
                chunk = dict(idx=sample_indices(data["size"], (RNG_CHUNK, args.batch_size), generators),
                             noise=randn(generators, RNG_CHUNK, args.batch_size, act_dim, device=device))
            idx, noise = chunk["idx"][:, (global_step - 1) % RNG_CHUNK], chunk["noise"][:, (global_step - 1) % RNG_CHUNK]
            batch = {k: gather(data[k], idx) for k in ("obs", "actions", "rewards", "next_obs", "dones")}
            batch["lambda_tn"] = gather(lambda_tn, idx)
            critic_loss, q, weight, lambda_vd = td3bc_critic_loss(critic, critic_target, actor_target, batch, noise, args)
            critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.sum().backward()  # sum over agents: each agent's gradient is its own loss's
            critic_optimizer.step()

            if global_step % args.policy_freq == 0:
                actor_loss = td3bc_actor_loss(actor, critic, batch, weight, args)
                actor_optimizer.zero_grad(set_to_none=True)
                actor_loss.sum().backward()
                actor_optimizer.step()
                soft_update(critic_target, critic, args.tau)
                soft_update(actor_target, actor, args.tau)

            evaluate_now = global_step % args.eval_freq == 0 or global_step == args.total_steps
            if global_step % 1000 == 0 or evaluate_now:
                logs = {
                    "losses/td_loss": critic_loss.mean().item(),
                    "losses/policy_loss": actor_loss.mean().item(),
                    "losses/q_values": q.mean().item(),
                }
                if not args.no_tn:
                    logs.update({f"weights/lambda_tn_{f}": getattr(batch["lambda_tn"], f)().item() for f in ("mean", "min", "max")})
                if not args.no_vd:
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
            save_agent_checkpoints(run_dir, agent_ids, meta["env_kwargs"], args, [
                dict(actor=agent_state(actor, e, len(agent_ids)), critic=agent_state(critic, e, len(agent_ids)),
                     obs_mean=data["obs_mean"][e].cpu(), obs_std=data["obs_std"][e].cpu())
                for e in range(len(agent_ids))])
    writer.close()
