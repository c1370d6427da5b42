# docs and experiment results: docs/matd3bc.md
"""MATD3+BC: TD3+BC (Fujimoto & Gu, 2021) with the value deviation and transition
normalisation weights of "Offline Decentralized Multi-Agent Reinforcement Learning"
(Jiang & Lu, ECAI 2023, arXiv 2108.01832).

Every agent i is an independent offline learner on its own dataset B_i of (o_i, a_i, r, o'_i, done): its own actor,
twin critics, two conditional VAEs and optimiser state; no parameter sharing, no communication. The N learners are
one batched ensemble (a leading agent dimension on every weight), mathematically N separate learners
(tests/test_matd3bc.py). The run contract and per-agent sampling live in envs/run.py and envs/dataset.py.

    python matd3bc.py --env-id dg --epsilon 0.9            # MATD3+BC
    python matd3bc.py --env-id dg --no-vd --no-tn          # TD3+BC baseline
    python matd3bc.py --resume runs/<run_name>             # continue a killed run
"""

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

import envs
from envs import InputError
from envs import dataset as datasets
from envs import run as contract
from envs.dataset import gather, randn, sample_indices

SCRIPT = "matd3bc"


@dataclass
class Args(contract.RunArgs):
    # Algorithm specific arguments (the generic ones, --seed, --cuda, --track, ..., are contract.RunArgs')
    # the environment and its dataset
    env_id: str = "dg"
    """the environment id (see `envs.REGISTRY`)"""
    obs: str | None = None
    """dg: `full` (both positions, default) or `partial` (own); vault:<id>: `local` (default), `padded` (OG-MARL's) or
    `central` (one agent: the vault's state and the joint action, the centralized reference)"""
    partition: str | None = None
    """minari:<id> only: the joints per agent, e.g. `2x3`, or `1x6` for one agent (None: the robot's default)"""
    n_transitions: int | None = None
    """transitions per agent in the dataset (None: the env's recipe default, 1e6 for dg)"""
    # training
    total_steps: int = 30_000
    """gradient steps per agent (30k: the DG full-observation runs of docs/matd3bc.md; partial used 100k)"""
    eval_freq: int = 5_000
    """evaluate the team every this many steps"""
    eval_episodes: int = 100
    """evaluation episodes per evaluation (run side by side)"""
    batch_size: int | None = None
    """the batch size of each agent (None: the env's preset, PRESETS: 100 on dg and cn, 256 on minari: and vault:)"""
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
    # the paper's weights: lambda_vd (optimism, clipped to 1 +- epsilon) and lambda_tn
    epsilon: float = 0.9
    """optimism level: lambda_vd is clipped to [1 - epsilon, 1 + epsilon]"""
    no_vd: bool = False
    """switch off the value deviation weight lambda_vd"""
    no_tn: bool = False
    """switch off the transition normalisation weight lambda_tn"""
    tn_max: float = 10.0
    """lambda_tn is capped at this (>= 1): the paper finds [0.2, 1.4] for almost all samples, rare ones reach 1e4"""
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


# per-env defaults of the flags left unset (None): the paper's MPE batch (Appendix B) on dg and cn; on D4RL-style
# MuJoCo data (Minari, OG-MARL vaults) TD3+BC's own (Fujimoto & Gu 2021), since the paper gives none for Table 10
MPE, D4RL = dict(batch_size=100), dict(batch_size=256)
PRESETS = {"dg": MPE, "cn": MPE, "minari:": D4RL, "vault:": D4RL}


def apply_presets(args: Args) -> None:
    prefix = args.env_id.split(":")[0] + ":" if ":" in args.env_id else args.env_id
    preset = PRESETS.get(prefix, PRESETS["dg"])
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_args(args: Args) -> None:
    """Every flag's range, before anything is read or written."""
    contract.check_ranges(
        args, at_least_zero=("vae_steps", "policy_noise", "noise_clip", "alpha"),
        positive=("batch_size", "policy_freq", "vae_batch_size", "hidden_dim", "vae_latent_dim", "analysis_states",
                  "learning_rate", "vae_learning_rate"),
        intervals={"epsilon": ("[0, 1]", "lambda_vd is clipped to [1 - eps, 1 + eps]"), "tau": ("(0, 1]", ""),
                   "gamma": ("(0, 1)", ""), "tn_max": ("[1, inf)", "a cap of 1 leaves no lambda_tn above 1")})


def algorithm(args: Args) -> tuple[str, str]:
    """The paper's name of what the flags make (results.json `algorithm`) and the run-name variant."""
    variant = "".join(f"-{flag}" for flag in ("no_vd", "no_tn") if getattr(args, flag))
    weights = [w for w, off in (("lambda_vd", args.no_vd), ("lambda_tn", args.no_tn)) if not off]
    name = "MATD3+BC" if len(weights) == 2 else "TD3+BC" + (f" w/ {weights[0]}" if weights else "")
    return name, variant


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


def td3bc_critic_loss(critic, critic_target, actor_target, batch, args):
    """Per-agent TD loss E[lambda_tn * lambda_vd * (Q(s, a) - y)^2] over both twins (eq. (1)).

    batch: [n_agents, batch, *] tensors, `noise` standard normal [n_agents, batch, act_dim]
    for target policy smoothing. Returns (loss [n_agents], Q [2, n_agents, batch],
    weight lambda_tn * lambda_vd [n_agents, batch], lambda_vd or None)."""
    obs, actions, rewards, dones = batch["obs"], batch["actions"], batch["rewards"], batch["dones"]
    with torch.no_grad():
        noise = (batch["noise"] * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
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


def fit_lambda_tn(data, args, generators, device, steps=range):
    """Fit G1(a|s) and G2(a|s, s') on each agent's own data, then compute lambda_tn once
    for every transition (the VAEs are frozen afterwards). Returns [n_agents, T] and the logs."""
    n, _, obs_dim = data["obs"].shape
    act_dim = data["actions"].shape[-1]
    g1 = ConditionalVAE(obs_dim, act_dim, args.vae_latent_dim, args.hidden_dim, generators, device)
    g2 = ConditionalVAE(2 * obs_dim, act_dim, args.vae_latent_dim, args.hidden_dim, generators, device)
    optimizer = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=args.vae_learning_rate, fused=True)
    for step in steps(args.vae_steps):  # steps=run.fit_steps: a progress bar and the run's share of the cores
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


def soft_update(target, source, tau):
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def transition_weights(data, args, generators, run, device):
    """lambda_tn of every transition, fixed before Q-learning: fitted (or restored from the checkpoint), ones when
    switched off, capped at --tn-max. The uncapped spread goes to results.json."""
    if args.no_tn:
        return torch.ones(data["rewards"].shape, device=device)
    if run.state is not None:
        return run.state["lambda_tn"].to(device)
    lambda_tn, run.results["vae"] = fit_lambda_tn(data, args, generators, device, steps=run.fit_steps)
    run.scalars(0, run.results["vae"])
    run.results["lambda_tn"] = contract.lambda_tn_summary(lambda_tn, data["size"], run.agent_ids, args.tn_max)
    return lambda_tn.clamp(max=args.tn_max)


def evaluate_checkpoints(args, env, env_kwargs, device) -> None:
    """--checkpoints: a team assembled from separately trained agents, evaluated once; their own settings win."""
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
    ckpts, args = contract.load_agent_checkpoints(args, SCRIPT, env_kwargs, n_agents, shared=("hidden_dim",))
    generators = datasets.agent_generators(args.seed, list(range(n_agents)), device)
    actor = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
    critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
    modules = dict(actor=actor, critic=critic)
    obs_mean, obs_std = contract.load_team(ckpts, modules, "obs_mean", "obs_std", device=device)
    contract.evaluate_checkpoints(args, SCRIPT, env_kwargs, ckpts, algorithm, lambda: evaluate(
        env, actor, critic, obs_mean, obs_std, args.eval_episodes, args.gamma, args.seed, device), device)


KEYS = ("obs", "actions", "rewards", "next_obs", "dones")  # what an agent's minibatch holds, besides its lambda_tn

if __name__ == "__main__":
    args = contract.parse_args(Args, SCRIPT)
    apply_presets(args)
    check_args(args)
    algorithm_name, variant = algorithm(args)
    device = contract.pick_device(args.cuda)
    contract.check_wandb(args.track)

    # the environment and the agents this process trains
    vault = args.env_id.startswith("vault:")
    if args.obs is not None and args.env_id != "dg" and not vault:
        raise InputError(f"--obs only applies to dg and vault:<id>; {args.env_id} has one observation")
    if not args.env_id.startswith("minari:") and args.partition is not None:
        raise InputError(f"--partition only applies to minari:<dataset id>; {args.env_id} has its own agents")
    env_kwargs = {"obs": args.obs} if args.env_id == "dg" or vault else {"partition": args.partition}
    env = contract.make_env(SCRIPT, args.env_id, discrete=False, checkpoints=args.checkpoints, needs_states=True,
                            **env_kwargs)
    if args.checkpoints:
        evaluate_checkpoints(args, env, envs.resolve(args.env_id, env_kwargs)[0], device)
        raise SystemExit(0)
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
    agent_ids = contract.parse_agent_ids(args.agent_ids, n_agents)

    # data: agent i reads only its own file
    recipe = {"n_transitions": args.n_transitions}
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
        actor = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
        critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
        data = datasets.stack_agents([agent_data[i] for i in agent_ids], KEYS, device, normalize_obs=args.normalize_obs)
        analysis_obs = datasets.analysis_states(env, agent_data, agent_ids, args.analysis_states, args.seed, device)
        analysis_obs = (analysis_obs - data["obs_mean"]) / data["obs_std"]
        # ALGO LOGIC: lambda_tn is fixed per transition, computed once before Q-learning
        data["lambda_tn"] = lambda_tn = transition_weights(data, args, generators, run, device)

        actor_target = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
        critic_target = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
        actor_target.load_state_dict(actor.state_dict())
        critic_target.load_state_dict(critic.state_dict())
        actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, fused=True)
        sampler = datasets.Sampler(data, (*KEYS, "lambda_tn"), args.batch_size, generators, noise_shape=(act_dim,))
        run.restore(dict(actor=actor, critic=critic, actor_target=actor_target, critic_target=critic_target),
                    dict(actor=actor_optimizer, critic=critic_optimizer), sampler)
        actor_loss = run.state["policy_loss"] if run.state else torch.zeros(len(agent_ids))

        def evaluate_team(step):
            with run.evaluation(step) as entry:
                if len(agent_ids) > 1:
                    entry["value_difference"] = value_difference(actor, critic, analysis_obs)
                if len(agent_ids) == n_agents and getattr(env, "evaluates", True):
                    entry.update(evaluate(env, actor, critic, data["obs_mean"], data["obs_std"],
                                          args.eval_episodes, args.gamma, args.seed + step, device))

        if args.total_steps == 0:  # nothing to learn: evaluate the untrained team once
            evaluate_team(0)
            run.checkpoint(0, force=True, lambda_tn=lambda_tn, policy_loss=actor_loss)
        for global_step in run.steps():
            # ALGO LOGIC: one TD3+BC update of every agent, weighted by lambda_tn * lambda_vd
            batch = sampler.sample(global_step)
            critic_loss, q, weight, lambda_vd = td3bc_critic_loss(critic, critic_target, actor_target, batch, args)
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

            if run.log_due(global_step):
                run.log(global_step, {
                    "losses/td_loss": critic_loss.mean().item(), "losses/policy_loss": actor_loss.mean().item(),
                    "losses/q_values": q.mean().item(),
                    **contract.weight_logs(batch, lambda_vd, args)})
            if run.eval_due(global_step):
                evaluate_team(global_step)
            run.checkpoint(global_step, lambda_tn=lambda_tn, policy_loss=actor_loss)

        if args.save_model:
            run.save_agents(meta["env_kwargs"], dict(actor=actor, critic=critic), obs_mean=data["obs_mean"],
                            obs_std=data["obs_std"])
