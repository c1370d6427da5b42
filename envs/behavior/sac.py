# docs: docs/datasets.md, section "Multi-agent MuJoCo"
"""SAC (Haarnoja et al., 2018) on a single-agent v5 MuJoCo robot: the behaviour policies
of the multi-agent MuJoCo datasets (Appendix B of Jiang & Lu, "Offline Decentralized
Multi-Agent Reinforcement Learning", ECAI 2023).

CleanRL's sac_continuous_action.py, with what a multi-hour run on a shared CPU needs:
vectorised envs (gymnasium's SAME_STEP autoreset, `info["final_obs"]` for the true last
observation), a fixed ratio of gradient updates per env step, one torch thread, and
resumable checkpoints. It writes the three actors the dataset mixture needs:

- early: the actor at env step `--early-step`; the datasets sample it, standing in for
  the experience the learner generated early in training;
- intermediate: the first evaluated actor whose return reaches `--intermediate-fraction`
  of the expert target;
- expert: the best evaluated actor so far (rewritten whenever an evaluation beats it).

Each is a small actor-only file `<weights-dir>/<env-id>/{early,intermediate,expert}.pt`;
`returns.json` next to them records every evaluation. The joint action of an actor is
split among the agents by mamujoco's partition when datasets are collected.

    python -m envs.behavior.sac --env-id halfcheetah-2x3
    python -m envs.behavior.sac --env-id halfcheetah-2x3 --resume   # after an interruption

A checkpoint (`<run-dir>/checkpoint.pt`, written every `--checkpoint-freq` env steps under a
temporary name, then renamed) holds everything to resume: networks, optimisers, the
temperature, the replay buffer, step counters, RNG states, the evaluation record and the
saved actors. The episodes in flight when it was written are not stored: a resumed run
starts fresh episodes, which is the only way it differs from an uninterrupted one.

Layers (envs/__init__.py): this learner imports only the adapter (envs/mamujoco.py); the
dataset recipe (envs/recipes/mamujoco.py) imports `load_actor` from here, never the reverse.
"""

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import envs
from envs import InputError, mamujoco

PRESETS = {
    # expert target (evaluation return) and env-step budget: the steps the shipped actors were trained for (docs/datasets.md)
    "halfcheetah-2x3": dict(target_return=6000.0, total_timesteps=500_000),
    "walker2d-2x3": dict(target_return=3000.0, total_timesteps=700_000),
    "hopper-3x1": dict(target_return=2500.0, total_timesteps=500_000),
    "ant-2x4": dict(target_return=3000.0, total_timesteps=500_000),
}


@dataclass
class Args:
    exp_name: str = "sac"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
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

    # Algorithm specific arguments
    env_id: str = "halfcheetah-2x3"
    """the multi-agent MuJoCo env id whose robot to learn (SAC runs on its single-agent v5 env)"""
    total_timesteps: int | None = None
    """env steps to train for (None: the robot's preset in PRESETS); may grow on --resume"""
    num_envs: int = 8
    """the number of parallel envs"""
    updates_per_step: float = 0.25
    """gradient updates per env step (0.25 with 8 envs: 2 updates per vector step)"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target smoothing coefficient"""
    batch_size: int = 256
    """the batch size of sample from the replay memory"""
    learning_starts: int = 5_000
    """env steps of uniform random actions before learning starts"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q network optimizer"""
    policy_frequency: int = 2
    """the actor is updated this many times every this many critic updates (delayed, as in CleanRL)"""
    target_network_frequency: int = 1
    """the target networks are updated every this many critic updates"""
    alpha: float = 0.2
    """entropy regularization coefficient (used without --autotune)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient"""
    hidden_dim: int = 256
    """the width of the (hidden, hidden) MLPs"""

    # Behaviour policies, evaluation and checkpoints
    early_step: int = 25_000
    """env step at which the early actor is saved (with the defaults: 5k updates after 5k random steps)"""
    target_return: float | None = None
    """the expert target return (None: the robot's preset in PRESETS)"""
    intermediate_fraction: float = 1 / 3
    """the intermediate actor is the first one evaluated at >= this fraction of the target"""
    eval_freq: int = 10_000
    """evaluate the deterministic actor every this many env steps"""
    eval_episodes: int = 10
    """episodes per evaluation (run side by side)"""
    weights_dir: str = str(mamujoco.BEHAVIOR_DIR)
    """the actors go to <weights-dir>/<env-id>/"""
    run_dir: str | None = None
    """checkpoint and TensorBoard folder (None: runs/<env-id>__<exp-name>__<seed>)"""
    checkpoint_freq: int = 50_000
    """write a checkpoint every this many env steps (and at the end)"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint"""
    overwrite: bool = False
    """start afresh even if --run-dir holds a checkpoint or --weights-dir holds actors of this robot"""


# Arguments a resumed run may change; any other difference from the checkpoint is refused.
RESUMABLE_CHANGES = ("total_timesteps", "resume", "overwrite", "track", "wandb_project_name", "wandb_entity", "cuda")


# ALGO LOGIC: the networks
class SoftQNetwork(nn.Module):
    def __init__(self, obs_dim, act_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + act_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


LOG_STD_MAX = 2
LOG_STD_MIN = -5


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy. All four robots take actions in [-1, 1], so no rescaling."""

    def __init__(self, obs_dim, act_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc_mean = nn.Linear(hidden_dim, act_dim)
        self.fc_logstd = nn.Linear(hidden_dim, act_dim)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x)
        log_std = torch.tanh(self.fc_logstd(x))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)  # From SpinUp / Denis Yarats
        return mean, log_std

    def get_action(self, x):
        mean, log_std = self(x)
        std = log_std.exp()
        normal = torch.distributions.Normal(mean, std)
        x_t = normal.rsample()  # for reparameterization trick (mean + std * N(0,1))
        action = torch.tanh(x_t)
        log_prob = normal.log_prob(x_t) - torch.log(1 - action.pow(2) + 1e-6)  # enforcing the action bound
        return action, log_prob.sum(1, keepdim=True), torch.tanh(mean)

    def act(self, x, noise=None):
        """tanh(mean) (deterministic), or with standard normal `noise` a sample tanh(mean + std * noise)."""
        mean, log_std = self(x)
        return torch.tanh(mean if noise is None else mean + log_std.exp() * noise)


def save_actor(actor: Actor, path: Path, **meta) -> None:
    """A behaviour policy file: the actor's weights and what it is (~300 KB at hidden 256)."""
    obj = dict(actor=actor.state_dict(), obs_dim=actor.fc1.in_features, act_dim=actor.fc_mean.out_features,
               hidden_dim=actor.fc1.out_features, **meta)
    tmp = path.with_name(f"{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_actor(path) -> tuple[Actor, dict]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    actor = Actor(obj["obs_dim"], obj["act_dim"], obj["hidden_dim"])
    actor.load_state_dict(obj["actor"])
    actor.eval()
    return actor, {k: v for k, v in obj.items() if k != "actor"}


class SAC:
    """The learner: actor, twin soft Q-networks and their targets, the temperature and the optimisers."""

    def __init__(self, obs_dim, act_dim, args, device):
        self.args = args
        self.actor = Actor(obs_dim, act_dim, args.hidden_dim).to(device)
        self.qf1 = SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
        self.qf2 = SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
        self.qf1_target = SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
        self.qf2_target = SoftQNetwork(obs_dim, act_dim, args.hidden_dim).to(device)
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.q_optimizer = torch.optim.Adam(list(self.qf1.parameters()) + list(self.qf2.parameters()), lr=args.q_lr)
        self.actor_optimizer = torch.optim.Adam(list(self.actor.parameters()), lr=args.policy_lr)
        # automatic entropy tuning
        self.target_entropy = -float(act_dim)
        self.log_alpha = torch.zeros(1, requires_grad=True, device=device)  # starts at alpha = 1, as in CleanRL
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=args.q_lr)
        self.n_updates = 0

    @property
    def alpha(self) -> float:
        return self.log_alpha.exp().item() if self.args.autotune else self.args.alpha

    def update(self, data) -> dict:
        """One critic update (and, every `policy_frequency` of them, as many actor and temperature updates)."""
        args, alpha = self.args, self.alpha
        with torch.no_grad():
            next_state_actions, next_state_log_pi, _ = self.actor.get_action(data["next_obs"])
            qf1_next_target = self.qf1_target(data["next_obs"], next_state_actions)
            qf2_next_target = self.qf2_target(data["next_obs"], next_state_actions)
            min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) - alpha * next_state_log_pi
            next_q_value = data["rewards"] + (1 - data["terminations"]) * args.gamma * min_qf_next_target.view(-1)

        qf1_a_values = self.qf1(data["obs"], data["actions"]).view(-1)
        qf2_a_values = self.qf2(data["obs"], data["actions"]).view(-1)
        qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
        qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
        qf_loss = qf1_loss + qf2_loss
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()
        self.n_updates += 1
        logs = {"losses/qf1_values": qf1_a_values.mean().item(), "losses/qf_loss": qf_loss.item() / 2.0}

        if self.n_updates % args.policy_frequency == 0:  # TD3-style delayed update, compensated by repeating it
            for _ in range(args.policy_frequency):
                pi, log_pi, _ = self.actor.get_action(data["obs"])
                min_qf_pi = torch.min(self.qf1(data["obs"], pi), self.qf2(data["obs"], pi))
                actor_loss = ((alpha * log_pi) - min_qf_pi).mean()
                self.actor_optimizer.zero_grad()
                actor_loss.backward()
                self.actor_optimizer.step()
                if args.autotune:
                    with torch.no_grad():
                        _, log_pi, _ = self.actor.get_action(data["obs"])
                    alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
                    self.a_optimizer.zero_grad()
                    alpha_loss.backward()
                    self.a_optimizer.step()
                    alpha = self.alpha
            logs.update({"losses/actor_loss": actor_loss.item(), "losses/alpha": alpha})

        if self.n_updates % args.target_network_frequency == 0:
            with torch.no_grad():
                for net, target in ((self.qf1, self.qf1_target), (self.qf2, self.qf2_target)):
                    torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), args.tau)
        return logs

    MODULES = ("actor", "qf1", "qf2", "qf1_target", "qf2_target", "q_optimizer", "actor_optimizer", "a_optimizer")

    def state_dict(self) -> dict:
        state = {name: getattr(self, name).state_dict() for name in self.MODULES}
        return dict(state, log_alpha=self.log_alpha.detach().clone(), n_updates=self.n_updates)

    def load_state_dict(self, state: dict) -> None:
        for name in self.MODULES:
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.n_updates = state["n_updates"]


# TRY NOT TO MODIFY: the replay buffer
class ReplayBuffer:
    """A ring of transitions (s, a, r, s', terminated); a time-limit end is not terminal and bootstraps."""

    KEYS = ("obs", "next_obs", "actions", "rewards", "terminations")

    def __init__(self, capacity, obs_dim, act_dim):
        self.capacity, self.pos, self.size = capacity, 0, 0
        shapes = dict(obs=(obs_dim,), next_obs=(obs_dim,), actions=(act_dim,), rewards=(), terminations=())
        self.data = {k: np.zeros((capacity, *shapes[k]), dtype=np.float32) for k in self.KEYS}

    def add(self, **batch):
        idx = (self.pos + np.arange(len(batch["obs"]))) % self.capacity
        for k in self.KEYS:
            self.data[k][idx] = batch[k]
        self.pos = int(idx[-1] + 1) % self.capacity
        self.size = min(self.size + len(idx), self.capacity)

    def sample(self, batch_size, rng, device):
        idx = rng.integers(self.size, size=batch_size)
        return {k: torch.as_tensor(self.data[k][idx], device=device) for k in self.KEYS}

    def state_dict(self) -> dict:
        """Only the filled part: a checkpoint early in training stays small."""
        return dict(pos=self.pos, size=self.size, **{k: torch.from_numpy(self.data[k][: self.size]) for k in self.KEYS})

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = state["pos"], state["size"]
        for k in self.KEYS:
            self.data[k][: self.size] = state[k].numpy()


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def crossed(step: int, previous: int, every: int) -> bool:
    """Did the env-step counter pass a multiple of `every` between `previous` and `step`?"""
    return step // every > previous // every


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.env_id not in PRESETS:
        raise InputError(f"unknown env id {args.env_id!r}; the behaviour learner knows {', '.join(PRESETS)}")
    preset = PRESETS[args.env_id]
    total_timesteps = args.total_timesteps if args.total_timesteps is not None else preset["total_timesteps"]
    target_return = args.target_return if args.target_return is not None else preset["target_return"]
    for name in ("num_envs", "buffer_size", "batch_size", "eval_freq", "eval_episodes", "checkpoint_freq",
                 "hidden_dim", "policy_frequency", "target_network_frequency"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.updates_per_step <= 0:
        raise InputError(f"--updates-per-step must be > 0, got {args.updates_per_step}")
    run_dir = Path(args.run_dir or f"runs/{args.env_id}__{args.exp_name}__{args.seed}")
    weights_dir = Path(args.weights_dir) / args.env_id
    checkpoint_path = run_dir / "checkpoint.pt"
    levels_on_disk = [p.name for p in (weights_dir / f"{level}.pt" for level in mamujoco.LEVELS) if p.exists()]
    if args.resume:
        if not checkpoint_path.exists():
            raise InputError(f"no checkpoint at {checkpoint_path} to resume; start without --resume")
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        changed = [k for k, v in asdict(args).items() if k not in RESUMABLE_CHANGES and checkpoint["args"].get(k) != v]
        if changed:
            raise InputError(f"{checkpoint_path} was run with other {', '.join('--' + k.replace('_', '-') for k in changed)}; "
                             "resume with the same arguments (only --total-timesteps may grow)")
    else:
        checkpoint = None
        if not args.overwrite and (checkpoint_path.exists() or levels_on_disk):
            raise InputError(f"{checkpoint_path if checkpoint_path.exists() else weights_dir} holds an earlier run "
                             f"({', '.join(levels_on_disk) or 'a checkpoint'}); pass --resume to continue it or --overwrite to start afresh")
        for name in [*levels_on_disk, "returns.json"]:  # never leave another run's actors next to this run's
            (weights_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir, ignore_errors=True)  # nor its checkpoint and curves
    run_dir.mkdir(parents=True, exist_ok=True)
    weights_dir.mkdir(parents=True, exist_ok=True)
    if args.track:
        try:
            import wandb
        except ImportError:
            raise InputError("--track needs wandb: pip install wandb") from None
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_dir.name, save_code=True, resume="allow")

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(1)  # learners run side by side, one core each
    torch.set_flush_denormal(True)  # Adam's second moments decay into denormals, which are ~10x slower on CPU
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    rng = np.random.default_rng(args.seed)  # random actions and replay sampling

    # env setup: the single-agent robot for training, the multi-agent env (same robot) for evaluation
    eval_env = envs.make(args.env_id)
    mamujoco.route_mujoco_warnings()
    train_envs = gym.make_vec(eval_env.gym_id, num_envs=args.num_envs, vectorization_mode="sync",
                              vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    obs_dim, act_dim = eval_env.state_dim, eval_env.joint_act_dim

    agent = SAC(obs_dim, act_dim, args, device)
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim)
    versions = {p: metadata.version(p) for p in ("mujoco", "gymnasium", "gymnasium-robotics", "torch")}
    record = dict(env_id=args.env_id, gym_id=eval_env.gym_id, target_return=target_return,
                  intermediate_threshold=args.intermediate_fraction * target_return,
                  versions=versions, args=asdict(args), levels={}, evaluations=[])
    saved_actors = {}  # level -> actor state dict, kept in the checkpoint too
    global_step, update_credit = 0, 0.0
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["agent"])
        rb.load_state_dict(checkpoint["buffer"])
        rng.bit_generator.state = checkpoint["rng"]
        torch.set_rng_state(checkpoint["torch_rng"])
        global_step, update_credit = checkpoint["global_step"], checkpoint["update_credit"]
        record, saved_actors = checkpoint["record"], checkpoint["saved_actors"]
        record["args"] = asdict(args)
        # the weight files are those of the checkpoint: anything written after it came from lost steps
        for name in levels_on_disk:
            (weights_dir / name).unlink()
        for level, state in saved_actors.items():
            actor = Actor(obs_dim, act_dim, args.hidden_dim)
            actor.load_state_dict(state)
            save_actor(actor, weights_dir / f"{level}.pt", **record["levels"][level])
        write_json(record, weights_dir / "returns.json")
        print(f"resuming {run_dir} at env step {global_step} ({agent.n_updates} updates); episodes in flight restart")

    writer = SummaryWriter(str(run_dir), purge_step=global_step if checkpoint is not None else None)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    def evaluate() -> dict:
        @torch.no_grad()
        def policy(states):
            return agent.actor.act(torch.as_tensor(states, device=device)).cpu().numpy()

        returns = mamujoco.episode_returns(eval_env, policy, args.eval_episodes, seed=[args.seed, global_step])
        return dict(step=global_step, updates=agent.n_updates, eval_return=float(returns.mean()),
                    eval_return_std=float(returns.std()),
                    normalized_score=float(mamujoco.normalized_score(args.env_id, returns.mean())))

    def save_level(level: str, evaluation: dict) -> None:
        saved_actors[level] = {k: v.detach().cpu().clone() for k, v in agent.actor.state_dict().items()}
        record["levels"][level] = dict(evaluation, env_id=args.env_id, level=level, mujoco=versions["mujoco"])
        save_actor(agent.actor, weights_dir / f"{level}.pt", **record["levels"][level])
        progress.write(f"step {global_step}: saved the {level} actor (return {evaluation['eval_return']:.1f})")

    def save_checkpoint() -> None:
        atomic_save(dict(args=asdict(args), global_step=global_step, update_credit=update_credit,
                         agent=agent.state_dict(), buffer=rb.state_dict(), rng=rng.bit_generator.state,
                         torch_rng=torch.get_rng_state(), record=record, saved_actors=saved_actors), checkpoint_path)

    # TRY NOT TO MODIFY: start the game
    reset_seed = int(np.random.SeedSequence([args.seed, global_step]).generate_state(1)[0])
    obs, _ = train_envs.reset(seed=reset_seed)
    episode_return, episode_length = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=int)
    start_time, start_step, start_updates = time.time(), global_step, agent.n_updates
    logs = {}
    progress = tqdm(total=total_timesteps, initial=global_step, desc=f"SAC {eval_env.gym_id}", unit=" steps")
    while global_step < total_timesteps:
        # ALGO LOGIC: put action logic here
        if global_step < args.learning_starts:
            actions = rng.uniform(-1.0, 1.0, size=(args.num_envs, act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                actions = agent.actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device))[0].cpu().numpy()

        # TRY NOT TO MODIFY: execute the game; the true last observation of an ended episode is in info["final_obs"]
        next_obs, rewards, terminations, truncations, infos = train_envs.step(actions)
        real_next_obs = next_obs.copy()
        for k in np.flatnonzero(infos.get("_final_obs", [])):
            real_next_obs[k] = infos["final_obs"][k]
        rb.add(obs=obs, next_obs=real_next_obs, actions=actions, rewards=rewards, terminations=terminations)
        obs = next_obs
        previous_step, global_step = global_step, global_step + args.num_envs
        progress.update(args.num_envs)
        episode_return += rewards
        episode_length += 1
        for k in np.flatnonzero(terminations | truncations):
            writer.add_scalar("charts/episodic_return", episode_return[k], global_step)
            writer.add_scalar("charts/episodic_length", episode_length[k], global_step)
            episode_return[k], episode_length[k] = 0.0, 0

        # ALGO LOGIC: training, `updates_per_step` updates per env step on average
        if global_step >= args.learning_starts:
            update_credit += args.num_envs * args.updates_per_step
            while update_credit >= 1:
                update_credit -= 1
                logs = agent.update(rb.sample(args.batch_size, rng, device))
        if crossed(global_step, previous_step, 1000) and logs:
            for k, v in logs.items():
                writer.add_scalar(k, v, global_step)
            writer.add_scalar("charts/updates_per_second", (agent.n_updates - start_updates) / (time.time() - start_time), global_step)
            writer.add_scalar("charts/SPS", (global_step - start_step) / (time.time() - start_time), global_step)

        # the behaviour policies: early at a fixed step, intermediate at the first evaluation past the threshold, expert = best
        save_early = "early" not in saved_actors and global_step >= args.early_step
        evaluate_now = crossed(global_step, previous_step, args.eval_freq) or global_step >= total_timesteps
        if save_early or evaluate_now:
            evaluation = evaluate()
            writer.add_scalar("eval/return", evaluation["eval_return"], global_step)
            writer.add_scalar("eval/normalized_score", evaluation["normalized_score"], global_step)
            if save_early:
                save_level("early", evaluation)
            if evaluate_now:
                record["evaluations"].append(evaluation)
                if "intermediate" not in saved_actors and evaluation["eval_return"] >= record["intermediate_threshold"]:
                    save_level("intermediate", evaluation)
                if evaluation["eval_return"] > record["levels"].get("expert", {}).get("eval_return", -np.inf):
                    save_level("expert", evaluation)
            write_json(record, weights_dir / "returns.json")
            progress.set_postfix(eval_return=f"{evaluation['eval_return']:.0f}", best=f"{record['levels']['expert']['eval_return']:.0f}"
                                 if "expert" in record["levels"] else "-")

        if crossed(global_step, previous_step, args.checkpoint_freq) or global_step >= total_timesteps:
            save_checkpoint()

    progress.close()
    missing = [level for level in mamujoco.LEVELS if level not in saved_actors]
    if missing:
        print(f"warning: no {'/'.join(missing)} actor yet (intermediate needs an evaluation >= "
              f"{record['intermediate_threshold']:.0f}); continue with --resume --total-timesteps <more>")
    if record["levels"].get("expert", {}).get("eval_return", -np.inf) < target_return:
        print(f"warning: the best actor is below the expert target {target_return:.0f}; "
              "continue with --resume --total-timesteps <more>")
    if record["levels"].get("early", {}).get("eval_return", -np.inf) >= record["intermediate_threshold"]:
        print("warning: the early actor already reaches the intermediate threshold; rerun with a smaller --early-step")
    print(f"actors in {weights_dir}: " + ", ".join(f"{level} {record['levels'][level]['eval_return']:.1f}" for level in saved_actors))
    train_envs.close()
    writer.close()
