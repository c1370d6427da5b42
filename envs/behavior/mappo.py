# docs: docs/datasets.md, section "SMAC on SMAX" (to be written with the SMAX datasets)
"""MAPPO (Yu et al., 2022, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent
Games") on jaxmarl's SMAX: the behaviour policies of the SMAC datasets (`envs/smax.py`),
and the learner's own training transitions for the "replay" datasets.

The paper's SMAC datasets come from QMIX. Here the learner is MAPPO instead: on a CPU an
on-policy learner over vmapped JAX envs needs no replay buffer and no per-step Python,
so rollout and update are one jitted call, and JaxMARL (Rutherford et al., 2024) reports
MAPPO/IPPO as strong on SMAX. Our agents are SMAX's allies; the enemies play SMAX's
heuristic. The learner, PureJaxRL / JaxMARL style:

- actor: one feed-forward MLP shared by the agents, the agent's one-hot id appended to its
  own observation. Not recurrent: a dataset policy must be Markov in the agent's own
  observation. Unavailable actions get logit -1e10, so a sampled action is always legal;
- critic: V(world state), one value per env, since the team reward is shared (MAPPO's
  centralised critic; JaxMARL's appends an agent id, which a shared reward makes moot);
- `update` (jitted): a `lax.scan` rollout of `--num-steps` steps in `--num-envs` envs with
  auto-reset, GAE (a timeout bootstraps from V of the true last world state, a true end
  does not), then `--update-epochs` x `--num-minibatches` clipped-PPO steps with gradient
  clipping. The Python loop around it logs, evaluates, checkpoints and writes the replay.

Hyperparameters are JaxMARL's MAPPO SMAX config (baselines/MAPPO/config/
mappo_homogenous_rnn_smax.yaml: lr 2e-3 annealed to 0, 4 epochs x 4 minibatches, gamma
0.99, GAE lambda 0.95, clip 0.2 (ratio and value), entropy 0, value coefficient 0.5,
gradient norm 0.25, ReLU, width 128) with the GRU replaced by a second dense layer, and
64 envs x 64 steps per update instead of 128 x 128: a CPU budget is a few million steps,
and 4x more updates per env step learn faster (3m, 5e5 steps: 0.8 win rate against 0). PPO
learns from SMAX's own reward (our reward / `reward_scale`), the scale those values were
tuned on; evaluations and the replay report our scaled reward (a full win returns 20).

    python -m envs.behavior.mappo --env-id smax-3m
    python -m envs.behavior.mappo --env-id smax-3m --resume   # after an interruption

Outputs:
- `<weights-dir>/<env-id>/expert.npz`: the best evaluated actor (win rate, ties: mean
  return), rewritten when beaten; `medium.npz`: among the evaluated actors, the one whose
  win rate is closest to half the expert's (ties: the mean return closest to half the
  expert's; recomputed at every evaluation);
  `returns.json`: every evaluation and which snapshot each file is. An actor file is
  `save_actor`'s .npz; `load_actor` + `sample_actions` run it;
- `<run-dir>/` (default `runs/<env-id>__mappo__<seed>`): TensorBoard, `checkpoint.pkl`,
  `snapshots/update_<n>.npz` (the actor at each evaluation) and `replay/`.

Evaluation (every `--eval-freq` env steps and at the end): `--eval-episodes` episodes side
by side, actions sampled from the policy as the datasets do; win rate and mean return.

The replay: env `j < --record-envs` is recorded from agent `j % N`'s view only, so every
agent's stream comes from its own episodes. At every checkpoint `replay/chunk_<u>.npz`
receives the updates since the previous one (u = the first of them), each array
[steps, record_envs, ...] in time order: obs, actions (int64), avail, rewards (scaled team
reward), next_obs and next_avail (the true next ones: at an episode end the last
observation, before the auto-reset), states (world state), dones (a true end), timeouts,
won, first (the step starts an episode). `replay/streams.json` gives `agent_of_stream`, and
`replay/returns.json` is a copy of the record above: the replay datasets read the first seed's
replay whose best actor reached the target win rate (a failed run is refused). An
episode is complete when it runs from a `first` step to a done or timeout; the ones cut by
the end of training or by a resume are not. The default `--record-envs` (PRESETS) gives
each agent about 1.5e4 complete episodes over the preset budget:
record_envs / N * total_timesteps / (num_envs * episode length), with the mean episode
lengths of short runs here (3m 14 steps, 8m 18, 3s_vs_3z 50; 3s_vs_4z a guess of 60).

A checkpoint (`<run-dir>/checkpoint.pkl`, every `--checkpoint-freq` env steps and at the end,
written under a temporary name, then renamed) holds everything to resume: networks,
optimiser states, the RNG key, counters and the evaluation record. The envs are not
stored: a resumed run starts fresh episodes (every replay stream starts with `first`), and
the snapshots and replay chunks written after the checkpoint are removed.

Layers (envs/__init__.py): this learner imports only the adapter (envs/smax.py); the dataset
recipe (envs/recipes/smax.py) imports `load_actor` and `sample_actions` from here, never the reverse.
"""

import functools
import json
import os
import pickle
import shutil
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from envs import InputError, smax

PRESETS = {
    # env-step budget, an estimate with a margin: short runs here won 0.90 on 3m after 1.3e6 steps, 0.74 on 8m
    # after 5e5 (still rising), 1.0 on 3s_vs_3z after 4e5 (so 2e6, recording 63 of the 64 envs to give the replay
    # enough episodes); 3s_vs_4z not tried. Replay streams: see the docstring. `minutes`: the budget's wall-clock
    # training time on a 2-core CPU (docs/datasets.md, "Measured"), quoted by the replay datasets' refusal.
    "smax-3m": dict(total_timesteps=3_000_000, target_win_rate=0.8, record_envs=15, minutes=4),
    "smax-8m": dict(total_timesteps=5_000_000, target_win_rate=0.8, record_envs=32, minutes=17),
    "smax-3s_vs_3z": dict(total_timesteps=2_000_000, target_win_rate=0.8, record_envs=63, minutes=3),
    "smax-3s_vs_4z": dict(total_timesteps=10_000_000, target_win_rate=0.8, record_envs=18, minutes=14),
}


@dataclass
class Args:
    exp_name: str = "mappo"
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "offline-decentralized-marl"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""

    # Algorithm specific arguments
    env_id: str = "smax-3m"
    """the SMAX map to learn (one of PRESETS)"""
    total_timesteps: int | None = None
    """env steps to train for (None: the map's preset in PRESETS); may grow on --resume"""
    num_envs: int = 64
    """the number of parallel envs"""
    num_steps: int = 64
    """the steps run in each env per update (rollout length)"""
    learning_rate: float = 2e-3
    """the learning rate of both optimizers"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to 0 at --total-timesteps"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda of the generalised advantage estimate"""
    update_epochs: int = 4
    """the epochs over each rollout"""
    num_minibatches: int = 4
    """the minibatches per epoch"""
    clip_coef: float = 0.2
    """the PPO ratio clip, also the value clip"""
    ent_coef: float = 0.0
    """the entropy bonus coefficient"""
    vf_coef: float = 0.5
    """the value loss coefficient"""
    max_grad_norm: float = 0.25
    """the global gradient norm clip, actor and critic separately"""
    hidden_dim: int = 128
    """the width of the (hidden, hidden) MLPs of actor and critic"""

    # Behaviour policies, evaluation, replay and checkpoints
    target_win_rate: float | None = None
    """the expert target (None: the map's preset); only warned about"""
    eval_freq: int = 50_000
    """evaluate the actor every this many env steps"""
    eval_episodes: int = 200
    """episodes per evaluation (run side by side)"""
    record_envs: int | None = None
    """envs whose transitions go to replay/, a multiple of the number of agents (None: the map's preset; 0: none)"""
    weights_dir: str = str(smax.BEHAVIOR_DIR)
    """the actors go to <weights-dir>/<env-id>/"""
    run_dir: str | None = None
    """checkpoint, snapshots, replay and TensorBoard folder (None: runs/<env-id>__<exp-name>__<seed>)"""
    checkpoint_freq: int = 100_000
    """write a checkpoint, and the replay since the last one, every this many env steps (and at the end)"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint"""
    overwrite: bool = False
    """start afresh even if --run-dir holds a checkpoint or --weights-dir holds actors of this map"""


# Arguments a resumed run may change (its folders may have moved); any other difference from the checkpoint is refused.
RESUMABLE_CHANGES = ("total_timesteps", "resume", "overwrite", "track", "wandb_project_name", "wandb_entity",
                     "run_dir", "weights_dir")
LEVELS = ("expert", "medium")


class PPOConfig(NamedTuple):
    """What the jitted functions are compiled for (hashable: a static argument)."""

    env_id: str
    num_envs: int
    num_steps: int
    gamma: float
    gae_lambda: float
    update_epochs: int
    num_minibatches: int
    clip_coef: float
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    record_envs: int


@functools.cache
def smax_env(env_id: str) -> smax.Smax:
    return smax.make(env_id)


# ALGO LOGIC: the networks, plain dicts {w0, b0, w1, b1, w2, b2} of arrays
def mlp_init(key, sizes: list[int], out_scale: float) -> dict:
    """Orthogonal weights (gain sqrt 2 for hidden layers, `out_scale` for the last), zero biases: PureJaxRL's init."""
    params = {}
    for i, (key, n_in, n_out) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:])):
        gain = out_scale if i == len(sizes) - 2 else np.sqrt(2)
        params[f"w{i}"] = jax.nn.initializers.orthogonal(gain)(key, (n_in, n_out), jnp.float32)
        params[f"b{i}"] = jnp.zeros(n_out, jnp.float32)
    return params


def mlp(params: dict, x):
    n_layers = len(params) // 2
    for i in range(n_layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            x = jax.nn.relu(x)
    return x


def actor_init(key, obs_dim: int, n_agents: int, n_actions: int, hidden_dim: int) -> dict:
    return mlp_init(key, [obs_dim + n_agents, hidden_dim, hidden_dim, n_actions], out_scale=0.01)


def actor_logits(params, obs, avail):
    """obs [..., N, obs_dim], avail [..., N, A] bool -> masked logits [..., N, A] (the agent id is appended here)."""
    n_agents = obs.shape[-2]
    agent_id = jnp.broadcast_to(jnp.eye(n_agents, dtype=jnp.float32), (*obs.shape[:-1], n_agents))
    logits = mlp(params, jnp.concatenate([jnp.asarray(obs, jnp.float32), agent_id], -1))
    return jnp.where(avail, logits, -1e10)


def sample_actions(params, key, obs, avail):
    """One sampled (always available) action per agent: [..., N] int32."""
    return jax.random.categorical(key, actor_logits(params, obs, avail)).astype(jnp.int32)


def critic_init(key, state_dim: int, hidden_dim: int) -> dict:
    return mlp_init(key, [state_dim, hidden_dim, hidden_dim, 1], out_scale=1.0)


def critic_value(params, world_state):
    """world_state [..., state_dim] -> V [...]."""
    return mlp(params, world_state)[..., 0]


def save_actor(path, params, meta: dict) -> None:
    """A behaviour policy file: the actor's arrays and a json string of what it is (~100 KB at width 128)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **{k: np.asarray(v) for k, v in params.items()})
    os.replace(tmp, path)


def load_actor(path) -> tuple[dict, dict]:
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        params = {k: jnp.asarray(f[k]) for k in f.files if k != "meta"}
    return params, meta


def optimizer(cfg: PPOConfig):
    """Adam after clipping; the learning rate is applied in `ppo_step`, so it can change between updates without a recompile."""
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam(eps=1e-5))


@functools.partial(jax.jit, static_argnames="cfg")
def start_episodes(cfg: PPOConfig, key) -> dict:
    env = smax_env(cfg.env_id)
    obs, avail, world_state, state = jax.vmap(env.jax_reset)(jax.random.split(key, cfg.num_envs))
    state = jax.tree.map(lambda x: x.astype(x.dtype), state)  # SMAX's reset has weak types, its step not: one compile of `update`
    zeros = jnp.zeros(cfg.num_envs)
    return dict(obs=obs, avail=avail, world_state=world_state, state=state, first=jnp.ones(cfg.num_envs, bool),
                episode_return=zeros, episode_length=zeros)


@functools.partial(jax.jit, static_argnames="cfg")
def update(cfg: PPOConfig, train: dict, envs: dict, learning_rate):
    """One rollout in every env and the PPO epochs on it -> (train, envs, logs, replay)."""
    env = smax_env(cfg.env_id)
    n_agents = env.n_agents
    stream = jnp.arange(cfg.record_envs)
    stream_agent = stream % n_agents
    key, rollout_key, ppo_key = jax.random.split(train["key"], 3)

    # TRY NOT TO MODIFY: the rollout, with auto-reset
    def env_step(envs, key):
        action_key, step_key, reset_key = jax.random.split(key, 3)
        logits = actor_logits(train["actor"], envs["obs"], envs["avail"])  # [num_envs, n_agents, A]
        actions = jax.random.categorical(action_key, logits).astype(jnp.int32)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], -1)[..., 0]
        next_obs, next_avail, next_world_state, next_state, reward, terminated, timeout, won = jax.vmap(env.jax_step)(
            jax.random.split(step_key, cfg.num_envs), envs["state"], actions)
        ended = terminated | timeout
        episode_return, episode_length = envs["episode_return"] + reward, envs["episode_length"] + 1
        transition = dict(obs=envs["obs"], avail=envs["avail"], world_state=envs["world_state"], actions=actions,
                          log_prob=log_prob, reward=reward, next_world_state=next_world_state, terminated=terminated,
                          ended=ended, won=won, episode_return=episode_return, episode_length=episode_length)
        replay = dict(obs=envs["obs"][stream, stream_agent], actions=actions[stream, stream_agent],
                      avail=envs["avail"][stream, stream_agent], rewards=reward[stream],
                      next_obs=next_obs[stream, stream_agent], next_avail=next_avail[stream, stream_agent],
                      states=envs["world_state"][stream], dones=terminated[stream], timeouts=timeout[stream],
                      won=won[stream], first=envs["first"][stream])
        fresh = jax.vmap(env.jax_reset)(jax.random.split(reset_key, cfg.num_envs))
        continued = (next_obs, next_avail, next_world_state, next_state)
        obs, avail, world_state, state = jax.tree.map(
            lambda new, old: jnp.where(ended.reshape(-1, *[1] * (old.ndim - 1)), new, old), fresh, continued)
        envs = dict(obs=obs, avail=avail, world_state=world_state, state=state, first=ended,
                    episode_return=jnp.where(ended, 0.0, episode_return), episode_length=jnp.where(ended, 0, episode_length))
        return envs, (transition, replay)

    envs, (batch, replay) = jax.lax.scan(env_step, envs, jax.random.split(rollout_key, cfg.num_steps))

    # ALGO LOGIC: GAE on SMAX's own reward scale; a timeout bootstraps from the true last state, a true end does not
    value = critic_value(train["critic"], batch["world_state"])  # [num_steps, num_envs]
    next_value = critic_value(train["critic"], batch["next_world_state"])
    reward = batch["reward"] / env.reward_scale
    delta = reward + cfg.gamma * (1.0 - batch["terminated"]) * next_value - value

    def gae_step(gae, x):
        delta, ended = x
        gae = delta + cfg.gamma * cfg.gae_lambda * (1.0 - ended) * gae
        return gae, gae

    _, advantage = jax.lax.scan(gae_step, jnp.zeros(cfg.num_envs), (delta, batch["ended"]), reverse=True)
    target = advantage + value

    # ALGO LOGIC: clipped PPO over minibatches of (step, env) samples, each with its agents
    samples = dict(obs=batch["obs"], avail=batch["avail"], actions=batch["actions"], log_prob=batch["log_prob"],
                   world_state=batch["world_state"], value=value, target=target, advantage=advantage)
    samples = jax.tree.map(lambda x: x.reshape(cfg.num_steps * cfg.num_envs, *x.shape[2:]), samples)
    opt = optimizer(cfg)

    def actor_loss_fn(actor, mb):
        logits = actor_logits(actor, mb["obs"], mb["avail"])  # [minibatch, n_agents, A]
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, mb["actions"][..., None], -1)[..., 0]
        log_ratio = log_prob - mb["log_prob"]
        ratio = jnp.exp(log_ratio)
        advantage = (mb["advantage"] - mb["advantage"].mean()) / (mb["advantage"].std() + 1e-8)
        advantage = advantage[:, None]  # the team's advantage, for every agent
        pg_loss = -jnp.minimum(ratio * advantage, jnp.clip(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef) * advantage).mean()
        entropy = -jnp.where(mb["avail"], jnp.exp(log_probs) * log_probs, 0.0).sum(-1).mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_frac = (jnp.abs(ratio - 1) > cfg.clip_coef).mean()
        return pg_loss - cfg.ent_coef * entropy, dict(pg_loss=pg_loss, entropy=entropy, approx_kl=approx_kl, clip_frac=clip_frac)

    def critic_loss_fn(critic, mb):
        v = critic_value(critic, mb["world_state"])
        v_clipped = mb["value"] + jnp.clip(v - mb["value"], -cfg.clip_coef, cfg.clip_coef)
        value_loss = 0.5 * jnp.maximum(jnp.square(v - mb["target"]), jnp.square(v_clipped - mb["target"])).mean()
        return cfg.vf_coef * value_loss, dict(value_loss=value_loss)

    def ppo_step(train, mb):
        (_, actor_logs), actor_grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(train["actor"], mb)
        (_, critic_logs), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(train["critic"], mb)
        actor_updates, actor_opt = opt.update(actor_grads, train["actor_opt"])
        critic_updates, critic_opt = opt.update(critic_grads, train["critic_opt"])
        step = lambda p, u: p - learning_rate * u  # noqa: E731
        train = dict(train, actor=jax.tree.map(step, train["actor"], actor_updates), actor_opt=actor_opt,
                     critic=jax.tree.map(step, train["critic"], critic_updates), critic_opt=critic_opt)
        return train, dict(actor_logs, **critic_logs)

    def epoch(train, key):
        order = jax.random.permutation(key, cfg.num_steps * cfg.num_envs)
        minibatches = jax.tree.map(lambda x: x[order].reshape(cfg.num_minibatches, -1, *x.shape[1:]), samples)
        return jax.lax.scan(ppo_step, train, minibatches)

    train, losses = jax.lax.scan(epoch, train, jax.random.split(ppo_key, cfg.update_epochs))
    train = dict(train, key=key)
    ended = batch["ended"]
    logs = {f"losses/{k}": v.mean() for k, v in losses.items()}
    logs.update({"losses/explained_variance": 1 - (target - value).var() / (target.var() + 1e-8),
                 "episodes": ended.sum(), "return_sum": jnp.where(ended, batch["episode_return"], 0).sum(),
                 "length_sum": jnp.where(ended, batch["episode_length"], 0).sum(), "wins": batch["won"].sum()})
    return train, envs, logs, replay


@functools.partial(jax.jit, static_argnames=("env_id", "n_episodes"))
def evaluate(actor, key, env_id: str, n_episodes: int) -> dict:
    """`n_episodes` episodes side by side, sampled actions; an episode's outcome is fixed when it ends.

    A `lax.while_loop` that stops when every episode has ended (`max_steps` at the latest):
    3m fights last ~15 steps of the 100 allowed."""
    env = smax_env(env_id)
    reset_key, steps_key = jax.random.split(key)
    obs, avail, _, state = jax.vmap(env.jax_reset)(jax.random.split(reset_key, n_episodes))
    zeros, false = jnp.zeros(n_episodes), jnp.zeros(n_episodes, bool)

    def running(carry):
        t, over = carry[0], carry[4]
        return (t < env.max_steps) & ~over.all()

    def step(carry):
        t, obs, avail, state, over, episode_return, episode_length, wins = carry
        action_key, step_key = jax.random.split(jax.random.fold_in(steps_key, t))
        actions = sample_actions(actor, action_key, obs, avail)
        obs, avail, _, state, reward, terminated, timeout, won = jax.vmap(env.jax_step)(
            jax.random.split(step_key, n_episodes), state, actions)
        episode_return += jnp.where(over, 0.0, reward)
        episode_length += ~over
        wins |= won & ~over
        return t + 1, obs, avail, state, over | terminated | timeout, episode_return, episode_length, wins

    carry = (0, obs, avail, state, false, zeros, zeros, false)
    *_, episode_return, episode_length, wins = jax.lax.while_loop(running, step, carry)
    return dict(win_rate=wins.mean(), return_mean=episode_return.mean(), return_std=episode_return.std(),
                episode_length=episode_length.mean())


# TRY NOT TO MODIFY: files
def atomic_pickle(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
    os.replace(tmp, path)


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def write_npz(arrays: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def numbered(folder: Path, prefix: str) -> dict[int, Path]:
    """{n: path} of the `<prefix>_<n>.npz` files in a folder."""
    return {int(p.stem.removeprefix(prefix)): p for p in folder.glob(f"{prefix}*.npz")}


def crossed(step: int, previous: int, every: int) -> bool:
    """Did the env-step counter pass a multiple of `every` between `previous` and `step`?"""
    return step // every > previous // every


def main(args: Args) -> None:
    if args.env_id not in PRESETS:
        raise InputError(f"unknown env id {args.env_id!r}; the behaviour learner knows {', '.join(PRESETS)}")
    preset = PRESETS[args.env_id]
    total_timesteps = args.total_timesteps if args.total_timesteps is not None else preset["total_timesteps"]
    target_win_rate = args.target_win_rate if args.target_win_rate is not None else preset["target_win_rate"]
    record_envs = args.record_envs if args.record_envs is not None else preset["record_envs"]
    for name in ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches", "hidden_dim",
                 "eval_freq", "eval_episodes", "checkpoint_freq"):
        value = total_timesteps if name == "total_timesteps" else getattr(args, name)
        if value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.num_envs * args.num_steps % args.num_minibatches:
        raise InputError(f"--num-minibatches {args.num_minibatches} must divide --num-envs x --num-steps = {args.num_envs * args.num_steps}")
    env = smax_env(args.env_id)
    n_agents = env.n_agents
    if not 0 <= record_envs <= args.num_envs or record_envs % n_agents:
        raise InputError(f"--record-envs must be a multiple of {args.env_id}'s {n_agents} agents between 0 and "
                         f"--num-envs {args.num_envs}, got {record_envs}")
    cfg = PPOConfig(args.env_id, args.num_envs, args.num_steps, args.gamma, args.gae_lambda, args.update_epochs,
                    args.num_minibatches, args.clip_coef, args.ent_coef, args.vf_coef, args.max_grad_norm, record_envs)
    steps_per_update = args.num_envs * args.num_steps
    num_updates = -(-total_timesteps // steps_per_update)

    run_dir = Path(args.run_dir or f"runs/{args.env_id}__{args.exp_name}__{args.seed}")
    weights_dir = Path(args.weights_dir) / args.env_id
    checkpoint_path = run_dir / "checkpoint.pkl"
    snapshot_dir, replay_dir = run_dir / "snapshots", run_dir / "replay"
    on_disk = [p.name for p in (weights_dir / name for name in ("expert.npz", "medium.npz", "returns.json")) if p.exists()]
    if args.resume:
        if not checkpoint_path.exists():
            raise InputError(f"no checkpoint at {checkpoint_path} to resume; start without --resume")
        with open(checkpoint_path, "rb") as f:
            checkpoint = pickle.load(f)
        changed = [k for k, v in asdict(args).items() if k not in RESUMABLE_CHANGES and checkpoint["args"].get(k) != v]
        if changed:
            raise InputError(f"{checkpoint_path} was run with other {', '.join('--' + k.replace('_', '-') for k in changed)}; "
                             "resume with the same arguments (only --total-timesteps may grow)")
    else:
        checkpoint = None
        if not args.overwrite and (checkpoint_path.exists() or on_disk):
            raise InputError(f"{checkpoint_path if checkpoint_path.exists() else weights_dir} holds an earlier run "
                             f"({', '.join(on_disk) or 'a checkpoint'}); pass --resume to continue it or --overwrite to start afresh")
        for name in on_disk:  # never leave another run's actors next to this run's
            (weights_dir / name).unlink()
        shutil.rmtree(run_dir, ignore_errors=True)  # nor its checkpoint, snapshots, replay and curves
    for folder in (run_dir, snapshot_dir, replay_dir, weights_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if args.track:
        try:
            import wandb
        except ImportError:
            raise InputError("--track needs wandb: pip install wandb") from None
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_dir.name, save_code=True, resume="allow")

    # TRY NOT TO MODIFY: seeding and the learner's state
    versions = {p: metadata.version(p) for p in smax.PINNED_PACKAGES}
    actor_key, critic_key, train_key = jax.random.split(jax.random.key(args.seed), 3)
    actor = actor_init(actor_key, env.obs_dim, n_agents, env.n_actions, args.hidden_dim)
    critic = critic_init(critic_key, env.state_dim, args.hidden_dim)
    train = dict(actor=actor, critic=critic, actor_opt=optimizer(cfg).init(actor), critic_opt=optimizer(cfg).init(critic),
                 key=train_key)
    record = dict(env_id=args.env_id, target_win_rate=target_win_rate, versions=versions, args=asdict(args),
                  evaluations=[], expert=None, medium=None)
    update_count, seconds = 0, 0.0
    actor_meta = dict(env_id=args.env_id, obs_dim=env.obs_dim, n_agents=n_agents, n_actions=env.n_actions,
                      hidden_dim=args.hidden_dim, max_steps=env.max_steps, reward_scale=env.reward_scale,
                      seed=args.seed, versions=versions)

    def save_level(level: str, evaluation: dict) -> None:
        params, meta = load_actor(snapshot_dir / evaluation["snapshot"])
        save_actor(weights_dir / f"{level}.npz", params, dict(meta, level=level))

    def write_record() -> None:  # and a copy beside the replay, which tells the replay datasets whether the run learned
        write_json(record, weights_dir / "returns.json")
        if record_envs:
            write_json(record, replay_dir / "returns.json")

    if checkpoint is not None:
        train = dict(checkpoint["train"], key=jax.random.wrap_key_data(checkpoint["train"]["key"]))
        update_count, seconds, record = checkpoint["update"], checkpoint["seconds"], checkpoint["record"]
        record["args"] = asdict(args)
        # the files are those of the checkpoint: anything written after it came from lost steps
        for folder, prefix in ((snapshot_dir, "update_"), (replay_dir, "chunk_")):
            for n, path in numbered(folder, prefix).items():
                if n > update_count:
                    path.unlink()
        for name in on_disk:
            (weights_dir / name).unlink()
        for level in LEVELS:
            if record[level] is not None:
                save_level(level, record[level])
        write_record()
        print(f"resuming {run_dir} at env step {update_count * steps_per_update} ({update_count} updates); episodes in flight restart")
    agent_of_stream = [j % n_agents for j in range(record_envs)]
    write_json(dict(env_id=args.env_id, n_agents=n_agents, agent_of_stream=agent_of_stream, num_steps=args.num_steps,
                    reward_scale=env.reward_scale), replay_dir / "streams.json")

    writer = SummaryWriter(str(run_dir), purge_step=update_count * steps_per_update if checkpoint is not None else None)
    if checkpoint is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    def run_evaluation(env_step: int) -> dict:
        key = jax.random.fold_in(jax.random.key(args.seed + 1), update_count)
        result = {k: float(v) for k, v in evaluate(train["actor"], key, args.env_id, args.eval_episodes).items()}
        evaluation = dict(env_step=env_step, update=update_count, **result, seconds=round(seconds, 1),
                          snapshot=f"update_{update_count:06d}.npz")
        save_actor(snapshot_dir / evaluation["snapshot"], train["actor"],
                   dict(actor_meta, env_step=env_step, update=update_count, win_rate=result["win_rate"],
                        return_mean=result["return_mean"]))
        return evaluation

    replay_since_checkpoint = []

    def save_checkpoint() -> None:
        if replay_since_checkpoint:  # first the replay, so that a checkpoint never misses its replay
            chunk = {k: np.concatenate([r[k] for r in replay_since_checkpoint]) for k in replay_since_checkpoint[0]}
            chunk["actions"] = chunk["actions"].astype(np.int64)
            first_update = update_count - len(replay_since_checkpoint) + 1
            write_npz(chunk, replay_dir / f"chunk_{first_update:06d}.npz")
            replay_since_checkpoint.clear()
        state = jax.device_get(dict(train, key=jax.random.key_data(train["key"])))
        atomic_pickle(dict(args=asdict(args), update=update_count, seconds=seconds_before + time.time() - start_time,
                           train=state, record=record), checkpoint_path)

    # TRY NOT TO MODIFY: start the game; fresh episodes, also on a resume
    envs = start_episodes(cfg, jax.random.fold_in(jax.random.key(args.seed + 2), update_count))
    env_step = update_count * steps_per_update
    start_time, start_step, seconds_before = time.time(), env_step, seconds
    progress = tqdm(total=num_updates * steps_per_update, initial=env_step, desc=f"MAPPO {args.env_id}", unit=" steps")
    while update_count < num_updates:
        learning_rate = args.learning_rate * (1 - update_count / num_updates if args.anneal_lr else 1)
        train, envs, logs, replay = update(cfg, train, envs, learning_rate)
        logs, replay = jax.device_get((logs, replay))
        update_count += 1
        previous_step, env_step = env_step, env_step + steps_per_update
        if record_envs:
            replay_since_checkpoint.append(replay)

        for k, v in logs.items():
            if k.startswith("losses/"):
                writer.add_scalar(k, v, env_step)
        if logs["episodes"]:
            writer.add_scalar("charts/episodic_return", logs["return_sum"] / logs["episodes"], env_step)
            writer.add_scalar("charts/episodic_length", logs["length_sum"] / logs["episodes"], env_step)
            writer.add_scalar("charts/win_rate", logs["wins"] / logs["episodes"], env_step)
        writer.add_scalar("charts/learning_rate", learning_rate, env_step)
        writer.add_scalar("charts/SPS", (env_step - start_step) / (time.time() - start_time), env_step)
        progress.update(steps_per_update)
        seconds = seconds_before + time.time() - start_time

        # the behaviour policies: expert = best so far, medium = closest to half the expert's win rate
        final = update_count == num_updates
        if crossed(env_step, previous_step, args.eval_freq) or final:
            evaluation = run_evaluation(env_step)
            record["evaluations"].append(evaluation)
            for k in ("win_rate", "return_mean", "episode_length"):
                writer.add_scalar(f"eval/{k}", evaluation[k], env_step)
            expert = record["expert"]
            if expert is None or (evaluation["win_rate"], evaluation["return_mean"]) > (expert["win_rate"], expert["return_mean"]):
                record["expert"] = expert = evaluation
                save_level("expert", evaluation)
            medium = min(record["evaluations"], key=lambda e: (abs(e["win_rate"] - expert["win_rate"] / 2),
                                                               abs(e["return_mean"] - expert["return_mean"] / 2)))
            if medium != record["medium"]:
                record["medium"] = medium
                save_level("medium", medium)
            write_record()
            progress.set_postfix(win_rate=f"{evaluation['win_rate']:.2f}", best=f"{expert['win_rate']:.2f}")
        if crossed(env_step, previous_step, args.checkpoint_freq) or final:
            save_checkpoint()

    progress.close()
    expert = record["expert"]
    if expert is not None and expert["win_rate"] < target_win_rate:
        print(f"warning: the best actor wins {expert['win_rate']:.2f} of its episodes, below the target {target_win_rate}; "
              "continue with --resume --total-timesteps <more>, or train another --seed (the replay datasets read the first "
              "seed in runs/ that reached the target)")
    if expert is not None:
        print(f"actors in {weights_dir}: expert {expert['snapshot']} (win rate {expert['win_rate']:.2f}), "
              f"medium {record['medium']['snapshot']} (win rate {record['medium']['win_rate']:.2f})")
    writer.close()


if __name__ == "__main__":
    main(tyro.cli(Args))
