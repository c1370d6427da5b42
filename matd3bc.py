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
"""

import json
import os
import random
import time
from dataclasses import asdict, dataclass

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
    env_id: str = "dg"
    """the environment id (see `envs.REGISTRY`)"""
    obs: str = "full"
    """dg only: `full` (both positions) or `partial` (own position)"""
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
    batch_size: int = 100
    """the batch size of each agent"""
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


def fit_lambda_tn(data, args, generators, device, progress=True):
    """Fit G1(a|s) and G2(a|s, s') on each agent's own data, then compute lambda_tn once
    for every transition (the VAEs are frozen afterwards). Returns [n_agents, T] and the logs."""
    n, _, obs_dim = data["obs"].shape
    act_dim = data["actions"].shape[-1]
    g1 = ConditionalVAE(obs_dim, act_dim, args.vae_latent_dim, args.hidden_dim, generators, device)
    g2 = ConditionalVAE(2 * obs_dim, act_dim, args.vae_latent_dim, args.hidden_dim, generators, device)
    optimizer = torch.optim.Adam([*g1.parameters(), *g2.parameters()], lr=args.vae_learning_rate, fused=True)
    for step in tqdm(range(args.vae_steps), desc="fitting VAEs for lambda_tn", disable=not progress):
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
    return dict(
        team_return=float(team_return.mean()),
        team_return_std=float(team_return.std()),
        extrapolation_error=float(np.abs(q_start - discounted_return).mean()),
        q_start=float(q_start.mean()),
        mc_return=float(discounted_return.mean()),
    )


@torch.no_grad()
def value_difference(actor, critic, agent_obs):
    """max_i V_i(s) - min_i V_i(s), averaged over states, V_i(s) = Q_i(o_i, pi_i(o_i)) (Table 6)."""
    values = critic(agent_obs, actor(agent_obs)).min(0).values  # [n_agents, n_states]
    return float((values.max(0).values - values.min(0).values).mean())


def write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    args = tyro.cli(Args)
    if not 0 <= args.epsilon <= 1:
        raise InputError(f"--epsilon must lie in [0, 1] (lambda_vd is clipped to [1 - eps, 1 + eps]), got {args.epsilon}")
    for name in ("total_steps", "vae_steps"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("eval_freq", "eval_episodes", "batch_size", "policy_freq", "vae_batch_size", "hidden_dim"):
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
    if args.env_id != "dg" and args.obs != "full":
        raise InputError(f"--obs only applies to dg; {args.env_id} has one observation")
    env_kwargs = {"obs": args.obs} if args.env_id == "dg" else {}
    recipe = {"n_transitions": args.n_transitions}
    env = envs.make(args.env_id, **env_kwargs)
    full_env_kwargs, _ = envs.resolve(args.env_id, env_kwargs)
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
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
    results = dict(run_name=run_name, args=asdict(args), agent_ids=agent_ids, evaluations=[])

    if args.checkpoints:  # evaluate a team assembled from separately trained agents
        ckpts = []
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
            ckpts.append(ckpt)
        if len({c["args"]["hidden_dim"] for c in ckpts}) > 1:
            raise InputError("the checkpoints have different --hidden-dim; a team needs one network size")
        args.hidden_dim = ckpts[0]["args"]["hidden_dim"]
        actor = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
        critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
        obs_mean = torch.zeros(n_agents, 1, obs_dim, device=device)
        obs_std = torch.ones(n_agents, 1, obs_dim, device=device)
        for i, ckpt in enumerate(ckpts):
            load_agent_state(actor, i, n_agents, ckpt["actor"])
            load_agent_state(critic, i, n_agents, ckpt["critic"])
            obs_mean[i], obs_std[i] = ckpt["obs_mean"], ckpt["obs_std"]
        metrics = evaluate(env, actor, critic, obs_mean, obs_std, args.eval_episodes, args.gamma, args.seed, device)
        results.update(final=metrics, checkpoints=list(args.checkpoints))
        write_json(f"runs/{run_name}/results.json", results)
        print(f"team of {len(args.checkpoints)} checkpoints: return {metrics['team_return']:.2f} ± {metrics['team_return_std']:.2f}")
        raise SystemExit(0)

    actor = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
    critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
    env, agent_data, meta = datasets.load(args.env_id, env_kwargs, recipe, args.dataset_dir, agent_ids)
    data = stack_agent_data([agent_data[i] for i in agent_ids], args.normalize_obs, device)
    # states from the union of all agents' data, seen through each agent's eyes
    union = np.concatenate([agent_data[i]["states"] for i in agent_ids])
    union = union[np.random.default_rng(args.seed).choice(len(union), min(args.analysis_states, len(union)), replace=False)]
    analysis_obs = torch.as_tensor(np.stack([env.observe(union)[i] for i in agent_ids]), device=device)
    analysis_obs = (analysis_obs - data["obs_mean"]) / data["obs_std"]

    # ALGO LOGIC: lambda_tn is fixed per transition, computed once before Q-learning
    if args.no_tn:
        lambda_tn = torch.ones(data["rewards"].shape, device=device)
    else:
        lambda_tn, vae_logs = fit_lambda_tn(data, args, generators, device)
        for k, v in vae_logs.items():
            writer.add_scalar(k, v, 0)
    for i, a in enumerate(agent_ids):
        lt = lambda_tn[i, : data["size"][i]]
        print(f"agent {a}: lambda_tn mean {lt.mean():.3f} min {lt.min():.3f} max {lt.max():.3f}")

    actor_target = Actor(obs_dim, act_dim, args.hidden_dim, generators, device)
    critic_target = TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, device)
    actor_target.load_state_dict(actor.state_dict())
    critic_target.load_state_dict(critic.state_dict())
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate, fused=True)

    start_time = time.time()
    logs, actor_loss = {}, torch.zeros(len(agent_ids))
    progress = tqdm(range(1, args.total_steps + 1), desc="training", unit=" steps")
    for global_step in progress:
        # ALGO LOGIC: one TD3+BC update of every agent, weighted by lambda_tn * lambda_vd
        if (global_step - 1) % RNG_CHUNK == 0:  # one draw per agent for RNG_CHUNK steps: per-step draws cost more
            idx_chunk = sample_indices(data["size"], (RNG_CHUNK, args.batch_size), generators)
            noise_chunk = randn(generators, RNG_CHUNK, args.batch_size, act_dim, device=device)
        idx, noise = idx_chunk[:, (global_step - 1) % RNG_CHUNK], noise_chunk[:, (global_step - 1) % RNG_CHUNK]
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
            sps = global_step / (time.time() - start_time)
            logs = {
                "losses/critic_loss": critic_loss.mean().item(),
                "losses/actor_loss": actor_loss.mean().item(),
                "losses/q_values": q.mean().item(),
                "charts/steps_per_second": sps,
            }
            if not args.no_tn:
                batch_tn = batch["lambda_tn"]
                logs.update({
                    "weights/lambda_tn_mean": batch_tn.mean().item(),
                    "weights/lambda_tn_min": batch_tn.min().item(),
                    "weights/lambda_tn_max": batch_tn.max().item(),
                })
            if not args.no_vd:
                logs.update({
                    "weights/lambda_vd_mean": lambda_vd.mean().item(),
                    "weights/lambda_vd_min": lambda_vd.min().item(),
                    "weights/lambda_vd_max": lambda_vd.max().item(),
                    "weights/lambda_vd_clipped_high": (lambda_vd >= 1 + args.epsilon - 1e-6).float().mean().item(),
                })
            for k, v in logs.items():
                writer.add_scalar(k, v, global_step)

        if evaluate_now:
            evaluation = dict(step=global_step, seconds=round(time.time() - start_time, 1))
            if len(agent_ids) > 1:
                evaluation["value_difference"] = value_difference(actor, critic, analysis_obs)
            if len(agent_ids) == n_agents:
                evaluation.update(evaluate(env, actor, critic, data["obs_mean"], data["obs_std"],
                                           args.eval_episodes, args.gamma, args.seed + global_step, device))
            evaluation.update({k: v for k, v in logs.items() if k.startswith(("weights/", "losses/"))})
            for k, v in evaluation.items():
                if k not in ("step", "seconds") and "/" not in k:
                    writer.add_scalar(f"eval/{k}", v, global_step)
            results["evaluations"].append(evaluation)
            results["final"] = evaluation
            write_json(f"runs/{run_name}/results.json", results)
            line = f"step {global_step}"
            if "team_return" in evaluation:
                line += f" | team return {evaluation['team_return']:.2f} ± {evaluation['team_return_std']:.2f}"
                line += f" | extrapolation error {evaluation['extrapolation_error']:.2f}"
            if "value_difference" in evaluation:
                line += f" | value difference {evaluation['value_difference']:.3f}"
            if "weights/lambda_vd_mean" in logs:
                line += f" | lambda_vd {logs['weights/lambda_vd_mean']:.3f}"
            progress.write(line)

    if args.save_model:
        for e, agent_id in enumerate(agent_ids):
            path = f"runs/{run_name}/agent_{agent_id}.pt"
            torch.save(dict(
                agent_id=agent_id, env_id=args.env_id, env_kwargs=meta["env_kwargs"], args=asdict(args),
                actor=agent_state(actor, e, len(agent_ids)), critic=agent_state(critic, e, len(agent_ids)),
                obs_mean=data["obs_mean"][e].cpu(), obs_std=data["obs_std"][e].cpu(),
            ), path + ".tmp")
            os.replace(path + ".tmp", path)
            print(f"saved {path}")
    results["seconds"] = round(time.time() - start_time, 1)
    write_json(f"runs/{run_name}/results.json", results)
    writer.close()
