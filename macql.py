# docs and experiment results: docs/macql.md
"""MACQL: discrete CQL (Kumar et al., 2020, CQL(H) on a Q-network) with the value deviation and
transition normalisation weights of "Offline Decentralized Multi-Agent Reinforcement Learning"
(Jiang & Lu, ECAI 2023, arXiv 2108.01832).

Every agent i is an independent offline learner on its own dataset B_i of (o_i, a_i, r, o'_i, done, avail masks):
its own Q-network, target network, VAEs and optimiser state; no parameter sharing, no communication. The N learners are
one batched ensemble (a leading agent dimension on every weight), mathematically N separate learners. Unavailable
actions never enter the logsumexp, the target's max or the greedy action. The run contract and per-agent sampling live
in envs/run.py and envs/dataset.py.

    python macql.py --env-id smax-3m --quality random                 # MACQL, Table 8
    python macql.py --env-id smax-3m --quality random --no-vd --no-tn # the CQL baseline
    python macql.py --env-id matrix-game --tn-estimator count         # sanity check: (a2, a1), payoff 6
    python macql.py --resume runs/<run_name>                          # continue a killed run
"""

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import envs
from envs import dataset as datasets
from envs import run as contract
from envs.dataset import gather, randn, sample_indices

SCRIPT = "macql"


@dataclass
class Args(contract.RunArgs):
    # Algorithm specific arguments (the generic ones, --seed, --cuda, --track, ..., are contract.RunArgs')
    cql_alpha: float | None = None
    """CQL's alpha: weight of logsumexp_a Q(o, a) - Q(o, a_data) (None: the env's preset, 0.2 = ECAI Table 12)"""
    weight_cql_term: bool = True
    """weight the CQL term by lambda_tn * lambda_vd, like the TD term (--no-weight-cql-term: TD only; docs/macql.md)"""
    # the environment and its dataset
    env_id: str = "smax-3m"
    """the environment id (see `envs.REGISTRY`); discrete-action envs only (smax-*, matrix-game)"""
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
    """the learning rate of the Q-network (ECAI Table 12)"""
    hidden_dim: int = 256
    """the width of the (hidden, hidden) MLPs"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target network update: lerp towards the online network by tau (1 = copy)"""
    target_update_freq: int = 1
    """update the target network every this many steps (discrete BCQ: 1 with tau 0.005, or 8000 with tau 1 on Atari)"""
    # the paper's weights: lambda_vd (optimism, clipped to 1 +- epsilon) and lambda_tn
    epsilon: float | None = None
    """optimism level: lambda_vd is clipped to [1 - epsilon, 1 + epsilon] (None: the env's preset, 0.99 on SMAC)"""
    no_vd: bool = False
    """switch off the value deviation weight lambda_vd"""
    no_tn: bool = False
    """switch off the transition normalisation weight lambda_tn"""
    tn_max: float = 10.0
    """lambda_tn is capped at this (>= 1): the paper finds [0.2, 1.4] for nearly all samples; SMAX has rare 1e4-1e7"""
    tn_estimator: Literal["vae", "count"] = "vae"
    """lambda_tn from the paper's two conditional VAEs, or exact 1 / P(s'|s, a) from counts (small discrete spaces)"""
    vae_steps: int = 5_000
    """gradient steps of the two conditional VAEs that give lambda_tn (fitted first, then frozen)"""
    vae_batch_size: int = 256
    """the batch size of the VAE fits"""
    vae_learning_rate: float = 1e-3
    """the learning rate of the VAE fits"""
    vae_latent_dim: int = 10
    """the latent size of both VAEs (the paper's "VAE hidden space")"""


# per-env defaults of the flags left unset (None). The paper gives one value per benchmark, not per map:
# epsilon 0.99 on SMAC (Appendix B) and CQL's alpha 0.2 (Table 12). The matrix game takes the same values
# (MACQL learns the optimal (a2, a1) with them, CQL the paper's (a1, a2): docs/macql.md).
SMAC = dict(epsilon=0.99, cql_alpha=0.2)
PRESETS = {"smax-3m": SMAC, "smax-8m": SMAC, "smax-3s_vs_3z": SMAC, "smax-3s_vs_4z": SMAC, "matrix-game": SMAC}


def apply_presets(args: Args) -> None:
    for name, value in PRESETS.get(args.env_id, SMAC).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_args(args: Args) -> None:
    """Every flag's range, before anything is read or written."""
    contract.check_ranges(
        args, at_least_zero=("vae_steps", "cql_alpha"),
        positive=("batch_size", "vae_batch_size", "hidden_dim", "target_update_freq", "vae_latent_dim", "learning_rate",
                  "vae_learning_rate"),
        intervals={"epsilon": ("[0, 1]", "lambda_vd is clipped to [1 - eps, 1 + eps]"), "tau": ("(0, 1]", ""),
                   "gamma": ("(0, 1)", ""), "tn_max": ("[1, inf)", "a cap of 1 leaves no lambda_tn above 1")})


def algorithm(args: Args) -> tuple[str, str]:
    """The paper's name of what the flags make (results.json `algorithm`) and the run-name variant."""
    variant = "".join(f"-{flag}" for flag in ("no_vd", "no_tn") if getattr(args, flag))
    if not args.weight_cql_term and not (args.no_vd and args.no_tn):
        variant += "-td_weights"
    weights = [w for w, off in (("lambda_vd", args.no_vd), ("lambda_tn", args.no_tn)) if not off]
    name = "MACQL" if len(weights) == 2 else "CQL" + (f" w/ {weights[0]}" if weights else "")
    return name, variant


# ALGO LOGIC: the networks, one member per agent
class VectorizedLinear(nn.Module):
    """Independent linear layers, one per agent: weight [n_agents, in, out], input [n_agents, batch, in]."""

    def __init__(self, in_features, out_features, generators, device=None):
        super().__init__()
        bound = 1 / np.sqrt(in_features)  # nn.Linear's default init, drawn from each agent's own stream
        weights, biases = [], []
        for g in generators:
            weights.append((torch.rand(in_features, out_features, generator=g, device=device) * 2 - 1) * bound)
            biases.append((torch.rand(1, out_features, generator=g, device=device) * 2 - 1) * bound)
        self.weight = nn.Parameter(torch.stack(weights))
        self.bias = nn.Parameter(torch.stack(biases))

    def forward(self, x):  # [n_agents, batch, in] -> [n_agents, batch, out], one batched matmul for every agent
        return torch.baddbmm(self.bias, x, self.weight)


class MLP(nn.Module):
    """(hidden, hidden) ReLU MLP of VectorizedLinear layers."""

    def __init__(self, in_dim, out_dim, hidden_dim, generators, device=None):
        super().__init__()
        sizes = ((in_dim, hidden_dim), (hidden_dim, hidden_dim), (hidden_dim, out_dim))
        self.layers = nn.ModuleList([VectorizedLinear(i, o, generators, device) for i, o in sizes])

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu_(layer(x))
        return self.layers[-1](x)


class QNetwork(nn.Module):
    """One Q-network per agent: observation -> Q-values of every action."""

    def __init__(self, obs_dim, n_actions, hidden_dim, generators, device=None):
        super().__init__()
        self.net = MLP(obs_dim, n_actions, hidden_dim, generators, device=device)

    def forward(self, obs):  # [n_agents, batch, obs_dim] -> [n_agents, batch, n_actions]
        return self.net(obs)


def masked(q, avail):  # unavailable actions get -inf: they never win a max, never enter a logsumexp
    return q.masked_fill(~avail, -torch.inf)


def take(values, actions):  # values [n_agents, batch, n_actions], actions [n_agents, batch] -> [n_agents, batch]
    return values.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def targets(qnet_target, obs, actions, next_obs, next_avail):
    """V'(s') = max over the available next actions of the target Q (SPEC: CQL's own next-state value), and
    Q^(s, a), both from the target network in one pass over s' and s. Every mask row allows some action
    (envs/dataset.py refuses data that does not)."""
    target_q = qnet_target(torch.cat([next_obs, obs], 1))  # [n_agents, 2 * batch, n_actions]
    target_next, target_obs = target_q.split(obs.shape[1], 1)
    return masked(target_next, next_avail).max(-1).values, take(target_obs, actions)


def cql_loss(q, actions, avail, td_target, weight, alpha, weight_cql_term):
    """Per-agent CQL(H) loss (Kumar et al. 2020, eq. 4), weighted per sample as in eq. (1) of the ECAI paper:
    E[w (Q(o, a) - y)^2 / 2] + alpha * E[w' (logsumexp_{a' available} Q(o, a') - Q(o, a))],
    w = lambda_tn * lambda_vd, w' = w (--weight-cql-term, the default) or 1 (--no-weight-cql-term).
    The 1/2 is Kumar et al.'s, so that alpha means what it means there (and in Huber-loss implementations).
    q [n_agents, batch, n_actions], the rest [n_agents, batch]. Returns (total, td, cql), each [n_agents]."""
    q_sa = take(q, actions)
    td = (weight * (q_sa - td_target) ** 2).mean(-1) / 2
    gap = torch.logsumexp(masked(q, avail), -1) - q_sa  # >= 0: pushes the other legal actions down, the data's up
    cql = ((weight if weight_cql_term else 1.0) * gap).mean(-1)
    return td + alpha * cql, td, cql


def value_deviation(next_value, q_sa, rewards, dones, gamma, epsilon):
    """lambda_vd = clip(1 + (V'(s') - E[V(s')]) / |E[V(s')]|, 1 - eps, 1 + eps), from target networks.

    E[V(s')] is estimated from the sample as (Q(s, a) - r) / gamma. A terminal transition has no next-state value
    to be optimistic about: its weight is 1."""
    expected = (q_sa - rewards) / gamma
    lambda_vd = 1 + (next_value - expected) / (expected.abs() + 1e-6)
    lambda_vd = lambda_vd.clamp(1 - epsilon, 1 + epsilon)
    return torch.where(dones, torch.ones_like(lambda_vd), lambda_vd)


def macql_loss(qnet, qnet_target, batch, gamma, epsilon, alpha, use_vd, weight_cql_term):
    """One batch of every agent -> the per-agent loss [n_agents] and the terms to log (tensors): td_loss the weighted
    (Q - y)^2 / 2, cql_loss logsumexp Q - Q(data) as it enters the loss (before alpha), q_values Q(o, a_data).

    batch: obs, next_obs [n_agents, batch, obs_dim]; actions, rewards, dones, lambda_tn [n_agents, batch];
    avail_actions, next_avail_actions [n_agents, batch, n_actions]. y = r + gamma (1 - done) V'(s')."""
    with torch.no_grad():
        next_value, q_sa_target = targets(qnet_target, batch["obs"], batch["actions"], batch["next_obs"],
                                          batch["next_avail_actions"])
        td_target = batch["rewards"] + gamma * torch.where(batch["dones"], 0.0, next_value)
        weight = batch["lambda_tn"]
        lambda_vd = None
        if use_vd:
            lambda_vd = value_deviation(next_value, q_sa_target, batch["rewards"], batch["dones"], gamma, epsilon)
            weight = weight * lambda_vd  # eq. (1): lambda_tn * lambda_vd
    q = qnet(batch["obs"])  # [n_agents, batch, n_actions]
    loss, td, cql = cql_loss(q, batch["actions"], batch["avail_actions"], td_target, weight, alpha, weight_cql_term)
    return loss, dict(td_loss=td, cql_loss=cql, q_values=take(q, batch["actions"]).detach(), lambda_vd=lambda_vd)


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


def fit_lambda_tn(data, args, generators, device, steps=range):
    """Fit G1(a|s) and G2(a|s, s') on each agent's own data, then compute lambda_tn once
    for every transition (the VAEs are frozen afterwards). Returns [n_agents, T] and the logs."""
    obs_dim, n_actions = data["obs"].shape[-1], data["avail_actions"].shape[-1]
    g1 = ConditionalVAE(obs_dim, n_actions, args.vae_latent_dim, args.hidden_dim, generators, device)
    g2 = ConditionalVAE(2 * obs_dim, n_actions, args.vae_latent_dim, args.hidden_dim, generators, device)
    optimizer = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=args.vae_learning_rate, fused=True)
    logs = {}
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
    logs.update({f"vae/mu{k + 1}_sq_norm": mu_sq[k].item() / lambda_tn.numel() for k in range(2)})
    return lambda_tn, logs


# ALGO LOGIC: evaluation of the team and the paper's analysis metrics
@torch.no_grad()
def evaluate(env, qnet, n_episodes, gamma, seed, device):
    """Run the team's greedy policies (argmax of Q over the available actions), every agent on its own
    observation; the same episodes as `envs.smax.evaluate_team(env, policy, n_episodes, seed)` (tested).

    Returns the team return (undiscounted, first `eval_episode_len` steps), the win rate where the
    env has wins, the extrapolation error |(1/N) sum_i Q_i(o_i, a_i) - G| at the start states, G the
    discounted Monte-Carlo return (Table 7), and `value_difference_eval`: max_i V_i(s) - min_i V_i(s),
    V_i = max over the available actions of Q_i(o_i, .), averaged over the states the team visits."""
    rng = np.random.default_rng(seed)
    obs = env.reset(n_episodes, rng)
    n_actions = qnet.net.layers[-1].weight.shape[-1]
    team_return, discounted_return = np.zeros(n_episodes), np.zeros(n_episodes)
    alive = np.ones(n_episodes, dtype=bool)
    spread, visited = 0.0, 0
    for t in range(env.eval_episode_len):
        o = torch.as_tensor(np.stack(obs), device=device)  # [n_agents, episodes, obs_dim]
        avail = [np.pad(m, [(0, 0), (0, n_actions - m.shape[-1])]) for m in env.avail_actions()]  # padded: never legal
        avail = torch.as_tensor(np.stack(avail), device=device)  # [n_agents, episodes, n_actions]
        q = masked(qnet(o), avail)  # [n_agents, episodes, n_actions], -inf where unavailable
        act = q.argmax(-1)
        values = q.max(-1).values  # V_i(o_i), [n_agents, episodes]
        spread += float(((values.max(0).values - values.min(0).values) * torch.as_tensor(alive, device=device)).sum())
        visited += int(alive.sum())
        if t == 0:
            q_start = values.mean(0).cpu().numpy()  # (1/N) sum_i Q_i(o_i, a_i), a_i the greedy action
            start_actions = act[:, 0].tolist()
        obs, reward, terminated = env.step(list(act.cpu().numpy()))
        team_return += alive * reward
        discounted_return += alive * gamma**t * reward
        alive &= ~terminated
        if not alive.any():
            break
    out = dict(team_return=float(team_return.mean()), team_return_std=float(team_return.std()),
               extrapolation_error=float(np.abs(q_start - discounted_return).mean()), q_start=float(q_start.mean()),
               mc_return=float(discounted_return.mean()), value_difference_eval=spread / visited,
               start_actions=start_actions)
    if hasattr(env, "won"):  # SMAX: every enemy dead while an ally lives
        out["win_rate"] = float(env.won.mean())
    return out


@torch.no_grad()
def value_difference(qnet, agent_obs):
    """max_i V_i(s) - min_i V_i(s), averaged over states, V_i(s) = max_a Q_i(o_i, a) (Table 6)."""
    values = qnet(agent_obs).max(-1).values  # [n_agents, n_states]
    return float((values.max(0).values - values.min(0).values).mean())


def soft_update(target, source, tau):
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)



def transition_weights(data, agent_data, args, generators, run, device):
    """lambda_tn of every transition, fixed before Q-learning: fitted or counted (or restored from the checkpoint),
    ones when switched off, capped at --tn-max. The uncapped spread goes to results.json."""
    if args.no_tn:
        return torch.ones(data["rewards"].shape, device=device)
    if run.state is not None:
        return run.state["lambda_tn"].to(device)
    if args.tn_estimator == "count":  # each agent's, padded like its data with ones (never sampled)
        counted = [count_lambda_tn(agent_data[i]["obs"], agent_data[i]["actions"], agent_data[i]["next_obs"])
                   for i in run.agent_ids]
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
    final = contract.evaluate_checkpoints(args, SCRIPT, env_kwargs, ckpts, algorithm, lambda: evaluate(
        env, qnet, args.eval_episodes, args.gamma, args.seed, device), device)
    print(f"joint action at the first state {final['start_actions']}")


BATCH_KEYS = ("obs", "actions", "rewards", "next_obs", "dones", "avail_actions", "next_avail_actions")

if __name__ == "__main__":
    args = contract.parse_args(Args, SCRIPT)
    apply_presets(args)
    check_args(args)
    algorithm_name, variant = algorithm(args)
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
    run = contract.Run(args, SCRIPT, algorithm_name, variant, meta, agent_ids, device)  # nothing is written before

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_flush_denormal(True)  # Adam's second moments decay into denormals, which are ~10x slower on CPU

    with run:
        generators = datasets.agent_generators(args.seed, agent_ids, device)
        qnet = QNetwork(obs_dim, n_actions, args.hidden_dim, generators, device)
        data = datasets.stack_agents([agent_data[i] for i in agent_ids], BATCH_KEYS, device, n_actions=n_actions)
        analysis_obs = None  # SMAX cannot show one agent's states to another
        if len(agent_ids) > 1 and hasattr(env, "observe"):
            analysis_obs = datasets.analysis_states(env, agent_data, agent_ids, 10_000, args.seed, device)
        # ALGO LOGIC: lambda_tn is fixed per transition, computed once before Q-learning
        data["lambda_tn"] = lambda_tn = transition_weights(data, agent_data, args, generators, run, device)

        qnet_target = QNetwork(obs_dim, n_actions, args.hidden_dim, generators, device)
        qnet_target.load_state_dict(qnet.state_dict())
        optimizer = torch.optim.Adam(qnet.parameters(), lr=args.learning_rate, fused=True)
        sampler = datasets.Sampler(data, (*BATCH_KEYS, "lambda_tn"), args.batch_size, generators)
        run.restore(dict(qnet=qnet, qnet_target=qnet_target), dict(qnet=optimizer), sampler)

        def evaluate_team(step):
            with run.evaluation(step) as entry:
                if analysis_obs is not None:
                    entry["value_difference"] = value_difference(qnet, analysis_obs)
                if len(agent_ids) == n_agents and getattr(env, "evaluates", True):
                    entry.update(evaluate(env, qnet, args.eval_episodes, args.gamma, args.seed + step, device))

        if args.total_steps == 0:  # nothing to learn: evaluate the untrained team once
            evaluate_team(0)
            run.checkpoint(0, force=True, lambda_tn=lambda_tn)
        for global_step in run.steps():
            # ALGO LOGIC: one CQL update of every agent, weighted by lambda_tn * lambda_vd (eq. (1))
            batch = sampler.sample(global_step)  # [n_agents, batch, ...]
            loss, terms = macql_loss(qnet, qnet_target, batch, args.gamma, args.epsilon, args.cql_alpha, not args.no_vd,
                                     args.weight_cql_term)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # sum over agents: each agent's gradient is its own loss's
            optimizer.step()
            if global_step % args.target_update_freq == 0:
                soft_update(qnet_target, qnet, args.tau)

            if run.log_due(global_step):
                losses = {f"losses/{k}": terms[k].mean().item() for k in ("td_loss", "cql_loss", "q_values")}
                run.log(global_step, {**losses, **contract.weight_logs(batch, terms["lambda_vd"], args)})
            if run.eval_due(global_step):
                evaluate_team(global_step)
            run.checkpoint(global_step, lambda_tn=lambda_tn)

        final = run.results["final"]
        if args.env_id == "matrix-game" and final and "start_actions" in final:
            joint = final["start_actions"]
            print(f"greedy joint action (a{joint[0] + 1}, a{joint[1] + 1}): payoff {final['team_return']:g}")
        if args.save_model:
            run.save_agents(meta["env_kwargs"], dict(qnet=qnet))
