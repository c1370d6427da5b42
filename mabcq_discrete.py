# docs and experiment results: docs/mabcq_discrete.md
"""MABCQ (discrete): discrete BCQ (Fujimoto et al., 2019) with the value deviation and transition normalisation weights
of "Offline Decentralized Multi-Agent Reinforcement Learning" (Jiang & Lu, ECAI 2023, arXiv 2108.01832).

Every agent i is an independent offline learner on its own dataset B_i of (o_i, a_i, r, o'_i, done, avail masks): its
own Q-network, behaviour classifier, VAEs and optimiser state; no parameter sharing, no communication. The N learners
are one batched ensemble (a leading agent dimension on every weight), mathematically N separate learners
(tests/test_mabcq_discrete.py); an agent's actions beyond its own count are masked out. The run contract and per-agent
sampling live in envs/run.py and envs/dataset.py.

    python mabcq_discrete.py --env-id matrix-game --tn-estimator count   # MABCQ, Table 4
    python mabcq_discrete.py --env-id matrix-game --no-tn                # BCQ w/ lambda_vd, Table 3
    python mabcq_discrete.py --env-id matrix-game --no-vd --no-tn        # BCQ, Table 2
    python mabcq_discrete.py --env-id smax-3m --quality medium           # MABCQ on SMAC (SMAX), Table 8
    python mabcq_discrete.py --resume runs/<run_name>                    # continue a killed run
"""

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import envs
from envs import matrix_game
from envs import dataset as datasets
from envs import run as contract
from envs.dataset import gather, randn, sample_indices

SCRIPT = "mabcq_discrete"


@dataclass
class Args(contract.RunArgs):
    # Algorithm specific arguments (the generic ones, --seed, --cuda, --track, ..., are contract.RunArgs')
    threshold: float | None = None
    """BCQ filter: a is allowed if pi_b(a|s) / max_a' pi_b(a'|s) > threshold (None: 0.6, 0.1 on matrix-game)"""
    # the environment and its dataset
    env_id: str = "matrix-game"
    """the environment id (see `envs.REGISTRY`); discrete-action envs only"""
    payoff: str | None = None
    """matrix-game only: payoff matrix, rows = agent 0's actions (None: Table 1, `1,5;6,1`)"""
    behavior: str | None = None
    """matrix-game only: behaviour policies, one row per agent (None: `0.8,0.2;0.4,0.6`)"""
    n_episodes: int | None = None
    """episodes per agent in the dataset (None: the env's recipe default, 1e5 for matrix-game, 1e4 for smax)"""
    quality: str | None = None
    """smax only: the dataset, random, medium, replay or expert (None: expert, the env's default)"""
    # training
    total_steps: int = 30_000
    """gradient steps per agent"""
    eval_freq: int = 5_000
    """evaluate the team every this many steps"""
    eval_episodes: int = 32
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
    # the paper's weights: lambda_vd (optimism, clipped to 1 +- epsilon) and lambda_tn
    epsilon: float = 0.99
    """optimism level: lambda_vd is clipped to [1 - epsilon, 1 + epsilon]"""
    no_vd: bool = False
    """switch off the value deviation weight lambda_vd"""
    no_tn: bool = False
    """switch off the transition normalisation weight lambda_tn"""
    tn_max: float = 10.0
    """lambda_tn is capped at this (>= 1): the paper finds [0.2, 1.4]; the VAE ratio gives rare SMAX ones 1e4 to 1e7"""
    tn_estimator: Literal["vae", "count"] = "vae"
    """lambda_tn from the paper's two conditional VAEs, or exact 1 / P(s'|s, a) from counts (small discrete states)"""
    vae_steps: int = 5_000
    """gradient steps of the two conditional VAEs that give lambda_tn (fitted first, then frozen)"""
    vae_batch_size: int = 256
    """the batch size of the VAE fits"""
    vae_learning_rate: float = 1e-3
    """the learning rate of the VAE fits"""
    vae_latent_dim: int = 10
    """the latent size of both VAEs (the paper's "VAE hidden space")"""


def check_args(args: Args) -> None:
    """Every flag's range, before anything is read or written."""
    contract.check_ranges(
        args, at_least_zero=("vae_steps",),
        positive=("batch_size", "vae_batch_size", "hidden_dim", "target_update_freq", "vae_latent_dim", "learning_rate",
                  "vae_learning_rate"),
        intervals={"epsilon": ("[0, 1]", "lambda_vd is clipped to [1 - eps, 1 + eps]"), "tau": ("(0, 1]", ""),
                   "gamma": ("(0, 1)", ""), "tn_max": ("[1, inf)", "a cap of 1 leaves no lambda_tn above 1"),
                   "threshold": ("[0, 1)", "the greedy action must pass its own filter")})


def algorithm(args: Args) -> tuple[str, str]:
    """The paper's name of what the flags make (results.json `algorithm`) and the run-name variant."""
    variant = "".join(f"-{flag}" for flag in ("no_vd", "no_tn") if getattr(args, flag))
    weights = [w for w, off in (("lambda_vd", args.no_vd), ("lambda_tn", args.no_tn)) if not off]
    name = "MABCQ" if len(weights) == 2 else "BCQ" + (f" w/ {weights[0]}" if weights else "")
    return name, variant


# per-env defaults of flags left unset: on the matrix game agent 0's a2 has behaviour probability 0.2 = 0.25 x 0.8, so
# SMAC's threshold 0.6 (Table 12, the default, as is its epsilon 0.99) would forbid the optimal joint action (a2, a1).
PRESETS = {"matrix-game": dict(threshold=0.1)}
DEFAULTS = dict(threshold=0.6)  # every other env
IMITATION_LOGIT_PENALTY = 1e-2  # discrete BCQ's 1e-2 * logits^2 on the classifier


def apply_presets(args: Args) -> None:
    for name, value in PRESETS.get(args.env_id, DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


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
        sizes = ((in_dim, hidden_dim), (hidden_dim, hidden_dim), (hidden_dim, out_dim))
        self.layers = nn.ModuleList([VectorizedLinear(i, o, generators, twins, device) for i, o in sizes])

    def forward(self, x, members=None):
        for layer in self.layers[:-1]:
            x = torch.relu_(layer(x, members))
        return self.layers[-1](x, members)


class QNetwork(nn.Module):
    """discrete BCQ's FC_Q, Q-values and a behaviour classifier: 2N members, every agent's Q head, then classifier."""

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
    """V'(s') and Q^(s, a), both from the target network. As in discrete BCQ (double DQN), the next action is the
    online Q's best among those passing the online classifier's filter and the mask; lambda_vd uses the same V'(s')."""
    q_next, logits_next = qnet(next_obs)
    next_action = greedy_action(q_next, allowed_actions(logits_next, next_avail, threshold))
    target_q = qnet_target.q(torch.cat([next_obs, obs], 1))  # one target pass over s' and s
    target_next, target_obs = target_q.split(obs.shape[1], 1)
    return take(target_next, next_action), take(target_obs, actions)


def value_deviation(next_value, q_sa, rewards, dones, gamma, epsilon):
    """lambda_vd = clip(1 + (V'(s') - E[V(s')]) / |E[V(s')]|, 1 - eps, 1 + eps), from target networks.

    E[V(s')] is estimated from the sample as (Q(s, a) - r) / gamma. A terminal transition has no next-state value
    to be optimistic about: its weight is 1."""
    expected = (q_sa - rewards) / gamma
    lambda_vd = 1 + (next_value - expected) / (expected.abs() + 1e-6)
    lambda_vd = lambda_vd.clamp(1 - epsilon, 1 + epsilon)
    return torch.where(dones, torch.ones_like(lambda_vd), lambda_vd)


def bcq_losses(qnet, qnet_target, batch, threshold, args):
    """Per-agent discrete BCQ losses of a batch {key: [n_agents, batch, *]} with each transition's lambda_tn: the TD
    loss E[lambda_tn * lambda_vd * (Q(s, a) - y)^2], y = r + gamma (1 - done) V'(s') (eq. (1)), and the behaviour
    classifier's -log pi_b(a|s) over the available actions + 1e-2 logits^2 (unweighted: it models the data). Returns
    (td_loss, imitation_loss) [n_agents], Q(s, a), logits [n_agents, batch, *], lambda_vd [n_agents, batch] or None."""
    obs, actions, rewards, next_obs, dones = (batch[k] for k in ("obs", "actions", "rewards", "next_obs", "dones"))
    with torch.no_grad():
        next_value, q_hat = targets(qnet, qnet_target, obs, actions, next_obs, batch["next_avail_actions"], threshold)
        td_target = rewards + args.gamma * torch.where(dones, 0.0, next_value)
        weight, lambda_vd = batch["lambda_tn"], None
        if not args.no_vd:
            lambda_vd = value_deviation(next_value, q_hat, rewards, dones, args.gamma, args.epsilon)
            weight = weight * lambda_vd
    q, logits = qnet(obs)  # [n_agents, batch, n_actions]
    q_sa = take(q, actions)
    td_loss = (weight * (q_sa - td_target) ** 2).mean(-1)  # eq. (1), [n_agents]; squared, not Huber: see the docs
    log_pi_b = F.log_softmax(logits.masked_fill(~batch["avail_actions"], -torch.inf), -1)
    imitation_loss = -take(log_pi_b, actions).mean(-1) + IMITATION_LOGIT_PENALTY * logits.pow(2).mean((1, 2))
    return td_loss, imitation_loss, q_sa, logits, lambda_vd


def count_lambda_tn(obs, actions, next_obs):
    """Exact lambda_tn = 1 / P^(s'|s, a) = N(s, a) / N(s, a, s') over one agent's (obs, action, next obs) tuples."""
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


def fit_lambda_tn(data, args, generators, device, steps=range):
    """Fit G1(a|s) and G2(a|s, s') on each agent's own data, then lambda_tn [n_agents, T] of every transition; logs."""
    obs_dim, n_actions = data["obs"].shape[-1], data["avail_actions"].shape[-1]
    g1 = ConditionalVAE(obs_dim, n_actions, args.vae_latent_dim, args.hidden_dim, generators, device)
    g2 = ConditionalVAE(2 * obs_dim, n_actions, args.vae_latent_dim, args.hidden_dim, generators, device)
    optimizer = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=args.vae_learning_rate, fused=True)
    for _ in steps(args.vae_steps):  # steps=run.fit_steps: a progress bar and the run's share of the cores
        idx = sample_indices(data["size"], (args.vae_batch_size,), generators)
        obs, actions, next_obs = gather(data["obs"], idx), gather(data["actions"], idx), gather(data["next_obs"], idx)
        onehot = F.one_hot(actions, n_actions).float()
        noise = randn(generators, 2, args.vae_batch_size, args.vae_latent_dim, device=device)
        loss_g1 = g1.loss(obs, actions, onehot, noise[:, 0])
        loss_g2 = g2.loss(torch.cat([obs, next_obs], -1), actions, onehot, noise[:, 1])
        optimizer.zero_grad(set_to_none=True)
        (loss_g1 + loss_g2).sum().backward()
        optimizer.step()
    logs = {"vae/g1_loss": loss_g1.mean().item(), "vae/g2_loss": loss_g2.mean().item()} if args.vae_steps else {}
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
    logs.update({f"vae/mu{k + 1}_sq_norm": mu_sq[k].item() / lambda_tn.numel() for k in range(2)})
    return lambda_tn, logs


# ALGO LOGIC: evaluation of the team, and the paper's Tables 2-4 on the matrix game
@torch.no_grad()
def evaluate(env, qnet, threshold, n_episodes, gamma, seed, device):
    """The team's greedy policies (argmax of Q over the allowed actions): team return (undiscounted, `eval_episode_len`
    steps), extrapolation error |(1/N) sum_i Q_i(o_i, a_i) - G| at the start (G: discounted Monte-Carlo return)."""
    obs = env.reset(n_episodes, np.random.default_rng(seed))
    n_actions = qnet.net.layers[-1].weight.shape[-1]
    team_return, discounted_return, alive = np.zeros(n_episodes), np.zeros(n_episodes), np.ones(n_episodes, dtype=bool)
    for t in range(env.eval_episode_len):
        o = torch.as_tensor(np.stack(obs), device=device)  # [n_agents, episodes, obs_dim]
        avail = np.stack([np.pad(m, [(0, 0), (0, n_actions - m.shape[1])]) for m in env.avail_actions()])
        avail = torch.as_tensor(avail, device=device)  # [n_agents, episodes, n_actions]; padded actions unavailable
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
    won = {"win_rate": float(env.won.mean())} if hasattr(env, "won") else {}  # SMAX: all enemies dead, an ally alive
    return dict(team_return=float(team_return.mean()), team_return_std=float(team_return.std()),
                extrapolation_error=float(np.abs(q_start - discounted_return).mean()), q_start=float(q_start.mean()),
                mc_return=float(discounted_return.mean()), start_actions=start_actions, **won)


@torch.no_grad()
def value_difference(qnet, threshold, agent_obs):
    """max_i V_i(s) - min_i V_i(s) averaged over states (Table 6), V_i(s) = max of Q_i(o_i, a) over a passing the filter
    (the states come without masks: every action counts as available)."""
    q, logits = qnet(agent_obs)
    allowed = allowed_actions(logits, torch.ones_like(q, dtype=torch.bool), threshold)
    values = q.masked_fill(~allowed, -torch.inf).max(-1).values  # [n_agents, n_states]
    return float((values.max(0).values - values.min(0).values).mean())


@torch.no_grad()
def matrix_game_tables(env, agent_data, agent_ids, lambda_tn, qnet, qnet_target, threshold, args, device):
    """Tables 2-4 of the paper from the learned networks: per agent and own action a, the dataset's P(outcome | start,
    a) and lambda_tn (envs/matrix_game.py), lambda_vd from the target networks, P^ ~ P lambda_tn lambda_vd, the expected
    return sum_s' P^(s') V'(s') and the network's Q_i(start, a) / gamma (what the greedy policy compares); next to the
    closed-form fixed point of the same formulas (outcome values = payoffs). Also V_i(start)'s spread (Prop. 1)."""
    n_actions, tables = qnet.net.layers[-1].weight.shape[-1], []
    rep = lambda x: torch.as_tensor(x, device=device).expand(len(agent_ids), *x.shape)  # noqa: E731, every member
    for e, i in enumerate(agent_ids):
        own_tn = lambda_tn[e, : len(agent_data[i]["rewards"])].cpu().numpy()  # the padding is not agent i's
        table = matrix_game.dataset_table(env, agent_data[i], i, own_tn)
        n_own, n_other = table["counts"].shape
        obs, actions, next_obs = map(rep, matrix_game.start_transitions(env, i))  # [n_agents, n_outcomes, *]
        next_avail = rep(np.tile(np.arange(n_actions) < env.act_dims[i], (obs.shape[1], 1)))  # padded: unavailable
        next_value, q_sa = (x[e] for x in targets(qnet, qnet_target, obs, actions, next_obs, next_avail, threshold[e]))
        zeros = torch.zeros_like(q_sa)  # the start step: reward 0, not terminal
        vd = torch.ones_like(next_value) if args.no_vd else value_deviation(
            next_value, q_sa, zeros, zeros.bool(), args.gamma, args.epsilon)
        vd = vd.cpu().numpy().reshape(n_own, n_other)
        weights = table["p_data"] * table["lambda_tn"] * vd
        p_mod = weights / np.maximum(weights.sum(1, keepdims=True), 1e-12)
        next_value = next_value.cpu().numpy().reshape(n_own, n_other)
        q_start = qnet.q(obs[:, :1])[e, 0, :n_own].cpu().numpy()
        p_closed, e_closed = matrix_game.closed_form(table["p_data"], table["payoff"], table["lambda_tn"],
                                                     not args.no_vd, args.epsilon)
        tables.append(dict(
            agent_id=i, payoff=table["payoff"].tolist(), counts=table["counts"].astype(int).tolist(),
            p_dataset=table["p_data"].tolist(), lambda_tn=table["lambda_tn"].tolist(), lambda_vd=vd.tolist(),
            p_modified=p_mod.tolist(), p_closed_form=p_closed.tolist(), next_value=next_value.tolist(),
            expected_return=(p_mod * next_value).sum(1).tolist(), expected_return_closed_form=e_closed.tolist(),
            q_over_gamma=(q_start / args.gamma).tolist(), lambda_tn_step2=table["lambda_tn_step2"]))
    values = [max(t["q_over_gamma"]) * args.gamma for t in tables]  # V_i(start)
    return dict(tables=tables, start_value_difference=max(values) - min(values))  # Proposition 1: consensus on V


def soft_update(target, source, tau):
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def transition_weights(data, agent_data, args, generators, run, device):
    """lambda_tn of every transition, fixed before Q-learning: counted or fitted (or restored from the checkpoint),
    ones when switched off, capped at --tn-max. The uncapped spread goes to results.json."""
    if args.no_tn:
        return torch.ones(data["rewards"].shape, device=device)
    if run.state is not None:
        return run.state["lambda_tn"].to(device)
    if args.tn_estimator == "count":  # each agent's, padded like its data with ones (never sampled)
        counted = [count_lambda_tn(*(agent_data[i][k] for k in ("obs", "actions", "next_obs"))) for i in run.agent_ids]
        counted = [np.pad(c, (0, data["rewards"].shape[1] - len(c)), constant_values=1) for c in counted]
        lambda_tn = torch.as_tensor(np.stack(counted), device=device)
    else:
        lambda_tn, run.results["vae"] = fit_lambda_tn(data, args, generators, device, steps=run.fit_steps)
        run.scalars(0, run.results["vae"])
        print(", ".join(f"{k} {v:.3f}" for k, v in run.results["vae"].items()))
    run.results["lambda_tn"] = contract.lambda_tn_summary(lambda_tn, data["size"], run.agent_ids, args.tn_max)
    return lambda_tn.clamp(max=args.tn_max)


def evaluate_checkpoints(args, env, env_kwargs, device) -> None:
    """--checkpoints: a team assembled from separately trained agents, evaluated once; their own settings win."""
    n_agents, obs_dim, n_actions = env.n_agents, env.obs_dims[0], max(env.act_dims)
    ckpts, args = contract.load_agent_checkpoints(args, SCRIPT, env_kwargs, n_agents, shared=("hidden_dim",))
    generators = datasets.agent_generators(args.seed, list(range(n_agents)), device)
    qnet = QNetwork(obs_dim, n_actions, args.hidden_dim, generators, device)
    contract.load_team(ckpts, dict(qnet=qnet))
    threshold = torch.tensor([c["args"]["threshold"] for c in ckpts], device=device)[:, None, None]  # each agent's own
    final = contract.evaluate_checkpoints(args, SCRIPT, env_kwargs, ckpts, algorithm, lambda: evaluate(
        env, qnet, threshold, args.eval_episodes, args.gamma, args.seed, device), device)
    print(f"joint action at the first state {final['start_actions']}")


KEYS = ("obs", "actions", "rewards", "next_obs", "dones", "avail_actions", "next_avail_actions")  # besides lambda_tn

if __name__ == "__main__":
    args = contract.parse_args(Args, SCRIPT)
    apply_presets(args)
    check_args(args)
    device = contract.pick_device(args.cuda)
    contract.check_wandb(args.track)

    # the environment and the agents this process trains
    env_kwargs = {k: getattr(args, k) for k in ("payoff", "behavior") if getattr(args, k) is not None}
    env = contract.make_env(SCRIPT, args.env_id, discrete=True, checkpoints=args.checkpoints, **env_kwargs)
    if args.checkpoints:
        evaluate_checkpoints(args, env, envs.resolve(args.env_id, env_kwargs)[0], device)
        raise SystemExit(0)
    n_agents, obs_dim, n_actions = env.n_agents, env.obs_dims[0], max(env.act_dims)
    agent_ids = contract.parse_agent_ids(args.agent_ids, n_agents)

    # data: agent i reads only its own file
    recipe = {"n_episodes": args.n_episodes, "quality": args.quality}
    env, agent_data, meta = datasets.load(args.env_id, env_kwargs, recipe, args.dataset_dir, agent_ids)
    run = contract.Run(args, SCRIPT, *algorithm(args), meta, agent_ids, device)  # nothing is written before

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_flush_denormal(True)  # Adam's second moments decay into denormals, which are ~10x slower on CPU

    with run:
        generators = datasets.agent_generators(args.seed, agent_ids, device)
        qnet = QNetwork(obs_dim, n_actions, args.hidden_dim, generators, device)
        threshold = torch.full((len(agent_ids), 1, 1), args.threshold, device=device)  # per agent
        data = datasets.stack_agents([agent_data[i] for i in agent_ids], KEYS, device, n_actions=n_actions)
        analysis_obs = None  # for Table 6's value difference; SMAX cannot show one agent's states to another
        if len(agent_ids) > 1 and hasattr(env, "observe"):
            analysis_obs = datasets.analysis_states(env, agent_data, agent_ids, 10_000, args.seed, device)
        # ALGO LOGIC: lambda_tn is fixed per transition, computed once before Q-learning
        data["lambda_tn"] = lambda_tn = transition_weights(data, agent_data, args, generators, run, device)
        qnet_target = QNetwork(obs_dim, n_actions, args.hidden_dim, generators, device)
        qnet_target.load_state_dict(qnet.state_dict())
        optimizer = torch.optim.Adam(qnet.parameters(), lr=args.learning_rate, fused=True)
        sampler = datasets.Sampler(data, (*KEYS, "lambda_tn"), args.batch_size, generators)
        run.restore(dict(qnet=qnet, qnet_target=qnet_target), dict(qnet=optimizer), sampler)

        def evaluate_team(step):
            with run.evaluation(step) as entry:
                if analysis_obs is not None:
                    entry["value_difference"] = value_difference(qnet, threshold, analysis_obs)
                if len(agent_ids) == n_agents and getattr(env, "evaluates", True):
                    entry.update(evaluate(env, qnet, threshold, args.eval_episodes, args.gamma, args.seed + step,
                                          device))
                if args.env_id == "matrix-game":
                    entry.update(matrix_game_tables(env, agent_data, agent_ids, lambda_tn, qnet, qnet_target,
                                                    threshold, args, device))

        if args.total_steps == 0:  # nothing to learn: evaluate the untrained team once
            evaluate_team(0)
            run.checkpoint(0, force=True, lambda_tn=lambda_tn)
        for global_step in run.steps():
            # ALGO LOGIC: one discrete BCQ update of every agent, the TD loss weighted by lambda_tn * lambda_vd
            batch = sampler.sample(global_step)
            td_loss, imitation_loss, q_sa, logits, lambda_vd = bcq_losses(qnet, qnet_target, batch, threshold, args)
            optimizer.zero_grad(set_to_none=True)
            (td_loss + imitation_loss).sum().backward()  # sum over agents: each agent's gradient is its own loss's
            optimizer.step()
            if global_step % args.target_update_freq == 0:
                soft_update(qnet_target, qnet, args.tau)
            if run.log_due(global_step):
                allowed = allowed_actions(logits, batch["avail_actions"], threshold)
                run.log(global_step, {
                    "losses/td_loss": td_loss.mean().item(), "losses/q_values": q_sa.mean().item(),
                    "losses/policy_loss": imitation_loss.mean().item(),  # the behaviour classifier's
                    "charts/allowed_actions": allowed.float().sum(-1).mean().item(),
                    **contract.weight_logs(batch, lambda_vd, args)})
            if run.eval_due(global_step):
                evaluate_team(global_step)
            run.checkpoint(global_step, lambda_tn=lambda_tn)

        final, tn = run.results["final"], f"lambda_tn ({args.tn_estimator})"
        if args.env_id == "matrix-game" and final:  # the paper's Tables 2-4 as learned, then the joint action
            weights = [w for w, off in (("lambda_vd", args.no_vd), (tn, args.no_tn)) if not off]
            matrix_game.print_tables(final["tables"], " * ".join(weights) or "no weights (BCQ)")
            if "start_actions" in final:
                joint = final["start_actions"]
                print(f"greedy joint action (a{joint[0] + 1}, a{joint[1] + 1}): payoff {final['team_return']:g}")
        if args.save_model:
            run.save_agents(meta["env_kwargs"], dict(qnet=qnet))
