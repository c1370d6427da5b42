"""Minari (D4RL-style) single-agent MuJoCo datasets split per agent (Table 10): `minari:<dataset id>`.

    python matd3bc.py --env-id minari:mujoco/halfcheetah/medium-v0                    # the robot's default partition, 2x3
    python matd3bc.py --env-id minari:mujoco/halfcheetah/medium-v0 --partition 1x6    # TD3+BC (single): one agent, every joint
    python -m envs.minari_split --robot hopper --quality medium                      # build odmarl/hopper/medium-v0 offline

The dataset is read from the local Minari store (`MINARI_DATASETS_PATH`, else Minari's
default `~/.minari/datasets`); an id that is not there is refused with the command that
gets it. The split follows the multi-agent MuJoCo partition (`--partition`, default per
robot: halfcheetah 2x3, hopper 3x1, walker2d 2x3, ant 2x4, as envs/mamujoco.py; `1x<joints>`
is one agent holding every joint): every agent observes the full state (the dataset's
observation), agent i gets its own slice of the joint action, the reward is shared,
`dones` are Minari's `terminations` and `timeouts` its `truncations` (an episode the
dataset cuts with neither counts as a timeout). Unlike the Appendix-B datasets, all agents'
files come from the same joint episodes: the dataset is split, not collected per agent.
The team is evaluated in the v5 robot of the dataset with the D4RL-normalised score.

D4RL's own downloads are not reachable here, so `python -m envs.minari_split` writes
D4RL-like datasets with Minari's writer from the SAC actors shipped in
envs/behavior/weights/ (ids `odmarl/<robot>/<quality>-v0`). How they differ from D4RL's:
`random` is uniform over [-1, 1] (D4RL: a randomly initialised policy); `medium` samples
the intermediate SAC actor and `expert` the expert one (D4RL: its own SAC runs, on the v2
robots under MuJoCo 1.5; ours are v5 robots under the pinned MuJoCo, so returns and
normalised scores compare only approximately); `medium-expert` is medium followed by
expert (as D4RL); there is no `medium-replay` (it needs the learner's replay buffer).
"""

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from envs import mamujoco

PINNED_PACKAGES = ("mujoco",)  # evaluation physics; the data are what the Minari file holds
ENV_DEFAULTS = dict(partition="", eval_episode_len=1000)  # partition "": the robot's default
RECIPE_DEFAULTS = dict()  # the dataset is given
# robot name in a dataset id -> the registered multi-agent env id that holds its defaults
ROBOTS = {"halfcheetah": "halfcheetah-2x3", "hopper": "hopper-3x1", "walker2d": "walker2d-2x3", "ant": "ant-2x4"}
QUALITIES = ("random", "medium", "expert", "medium-expert")
PREFIX = "minari:"


def robot_of(dataset_id: str) -> str:
    """The robot a dataset id names (`mujoco/halfcheetah/medium-v0` -> halfcheetah)."""
    found = [r for r in ROBOTS if r in dataset_id.lower().split("/") or f"{r}-" in dataset_id.lower()]
    if len(found) != 1:
        raise ValueError(f"cannot tell the robot of Minari dataset {dataset_id!r}; its id must name one of {', '.join(ROBOTS)} "
                         "(e.g. mujoco/hopper/medium-v0)")
    return found[0]


class SplitMuJoCo(mamujoco.MultiAgentMuJoCo):
    """The robot of a Minari dataset, its joints split among agents by a partition `<agents>x<joints each>`."""

    def __init__(self, dataset_id: str, partition: str = "", eval_episode_len: int = 1000):
        import gymnasium
        from gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi import MultiAgentMujocoEnv

        if eval_episode_len <= 0:
            raise ValueError(f"--eval-episode-len must be > 0, got {eval_episode_len}")
        mamujoco.route_mujoco_warnings()
        self.dataset_id, self.robot = dataset_id, robot_of(dataset_id)
        self.reference_env_id = ROBOTS[self.robot]  # D4RL references and the default partition
        task = mamujoco.TASKS[self.reference_env_id]
        self.partition = partition or task["agent_conf"]
        self.env_id = f"{PREFIX}{dataset_id}"
        self.gym_id = f"{task['scenario']}-v5"
        self.eval_episode_len = int(eval_episode_len)
        single = gymnasium.make(self.gym_id).unwrapped
        self.joint_act_dim, self.state_dim = single.action_space.shape[0], single.observation_space.shape[0]
        if self.partition == f"1x{self.joint_act_dim}":  # one agent holding every joint: TD3+BC (single)
            self.action_index = [np.arange(self.joint_act_dim)]
        else:
            try:
                parts = MultiAgentMujocoEnv(task["scenario"], self.partition).agent_action_partitions
            except Exception as e:  # gymnasium_robotics raises several kinds for an unknown partition
                raise ValueError(f"--partition {self.partition} does not fit {task['scenario']} ({self.joint_act_dim} joints): "
                                 f"{type(e).__name__}: {e}; use the robot's default {task['agent_conf']} or 1x{self.joint_act_dim}") from None
            self.action_index = [np.array([node.act_ids for node in part]) for part in parts]
        self.n_agents = len(self.action_index)
        self.obs_dims = [self.state_dim] * self.n_agents
        self.act_dims = [len(index) for index in self.action_index]
        self._make_sim = lambda: gymnasium.make(self.gym_id).unwrapped
        self._sims = []

    def normalized_score(self, returns):
        return mamujoco.normalized_score(self.reference_env_id, returns)


def load_minari(dataset_id: str):
    """The dataset from the local Minari store, or a one-line refusal naming the command that gets it."""
    import minari

    try:
        return minari.load_dataset(dataset_id)
    except (FileNotFoundError, ValueError) as e:
        if dataset_id.startswith("odmarl/"):
            robot, quality = dataset_id.split("/")[1], dataset_id.split("/")[2].rsplit("-v", 1)[0]
            fix = f"build it with `python -m envs.minari_split --robot {robot} --quality {quality}`"
        else:
            fix = f"download it with `minari download {dataset_id}` (needs the internet)"
        store = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise ValueError(f"Minari dataset {dataset_id!r} is not in the local store ({store}): {fix}") from None


def collect(env: SplitMuJoCo, agent_id: int, progress=None) -> dict:
    """Agent `agent_id`'s share of every episode: the full state, its own action slice, the shared reward."""
    dataset = load_minari(env.dataset_id)
    if dataset.spec.action_space.shape != (env.joint_act_dim,):
        raise ValueError(f"{env.dataset_id} has actions of shape {dataset.spec.action_space.shape}, {env.gym_id} takes ({env.joint_act_dim},)")
    parts = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "dones", "timeouts")}
    for episode in dataset.iterate_episodes():
        obs = np.asarray(episode.observations, dtype=np.float32)
        if obs.shape[1] != env.state_dim:
            raise ValueError(f"{env.dataset_id} observes {obs.shape[1]} numbers, {env.gym_id} {env.state_dim}")
        n = len(episode.rewards)
        dones = np.asarray(episode.terminations, dtype=bool)
        timeouts = np.asarray(episode.truncations, dtype=bool) & ~dones
        timeouts[-1] |= not dones[-1]  # an episode the dataset cut: a time limit, never a terminal
        parts["obs"].append(obs[:-1])
        parts["next_obs"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32)[:, env.action_index[agent_id]])
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        parts["dones"].append(dones)
        parts["timeouts"].append(timeouts)
        if progress is not None:
            progress.update(n)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["states"] = out["obs"].copy()
    return out


def dataset_summary(data: dict) -> dict:
    ends = np.flatnonzero(data["dones"] | data["timeouts"])
    returns = np.add.reduceat(data["rewards"], np.r_[0, ends[:-1] + 1]) if len(ends) else np.array([data["rewards"].sum()])
    return dict(episodes=int(len(ends)), return_mean=float(returns.mean()), return_std=float(returns.std()))


class Task:
    """`minari:<dataset id>` behind the interface envs.REGISTRY expects of an env module."""

    ENV_DEFAULTS = ENV_DEFAULTS
    RECIPE_DEFAULTS = RECIPE_DEFAULTS
    PINNED_PACKAGES = PINNED_PACKAGES
    collect = staticmethod(collect)
    dataset_summary = staticmethod(dataset_summary)

    def __init__(self, env_id: str):
        import envs

        self.dataset_id = env_id[len(PREFIX):]
        try:  # the robot's default partition, written out, so that results and dataset folders name it
            robot = robot_of(self.dataset_id)
        except ValueError as e:
            raise envs.InputError(str(e)) from None
        self.ENV_DEFAULTS = {**ENV_DEFAULTS, "partition": mamujoco.TASKS[ROBOTS[robot]]["agent_conf"]}

    def make(self, **env_kwargs) -> SplitMuJoCo:
        return SplitMuJoCo(self.dataset_id, **env_kwargs)

    def fingerprint(self, recipe: dict) -> str | None:
        """A hash of the Minari files: a dataset rebuilt or replaced under the same id invalidates the split."""
        try:
            folder = Path(load_minari(self.dataset_id).storage.data_path)
        except ValueError:
            return None
        digest = hashlib.sha1()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:16]


# ---- building D4RL-like datasets from the shipped SAC actors ----
def build(robot: str, quality: str, n_steps: int = 1_000_000, seed: int = 0, behavior_dir: str = "",
          episode_len: int = 1000, progress=None) -> str:
    """Write `odmarl/<robot>/<quality>-v0` into the Minari store with Minari's writer; returns the id."""
    import minari
    import torch
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from envs.behavior.sac import load_actor
    from envs.recipes.mamujoco import rollout

    if robot not in ROBOTS or quality not in QUALITIES:
        raise ValueError(f"--robot takes {', '.join(ROBOTS)} and --quality {', '.join(QUALITIES)}; got {robot} {quality}")
    if n_steps <= 0 or episode_len <= 0:
        raise ValueError(f"--n-steps and --episode-len must be > 0, got {n_steps}, {episode_len}")
    env_id = ROBOTS[robot]
    env = mamujoco.make(env_id)
    rng = np.random.default_rng(seed)
    folder = Path(behavior_dir or mamujoco.BEHAVIOR_DIR) / env_id

    def sampled(level):
        actor, _ = load_actor(folder / f"{level}.pt")
        actor.double()  # float64, rounded to float32 actions: the same bytes on every x86 CPU (envs/recipes/mamujoco.py)

        @torch.no_grad()
        def policy(states):
            noise = torch.as_tensor(rng.standard_normal((len(states), env.joint_act_dim)), dtype=torch.float64)
            return actor.act(torch.as_tensor(states, dtype=torch.float64), noise).numpy().astype(np.float32)
        return policy

    policies = dict(random=lambda s: rng.uniform(-1, 1, (len(s), env.joint_act_dim)).astype(np.float32),
                    medium=None, expert=None)
    levels = {"random": ["random"], "medium": ["intermediate"], "expert": ["expert"], "medium-expert": ["intermediate", "expert"]}[quality]
    episodes = []
    for level in levels:
        policy = policies["random"] if level == "random" else sampled(level)
        data = rollout(env, policy, n_steps, episode_len, rng, progress)
        ends = np.flatnonzero(data["dones"] | data["timeouts"])
        for start, end in zip(np.r_[0, ends[:-1] + 1], ends + 1):
            obs = np.concatenate([data["states"][start:end], data["next_states"][end - 1: end]]).astype(np.float64)
            episodes.append(EpisodeBuffer(
                id=len(episodes), observations=list(obs), actions=list(data["actions"][start:end]),
                rewards=list(data["rewards"][start:end].astype(np.float64)), terminations=list(data["dones"][start:end]),
                truncations=list(data["timeouts"][start:end]), infos={}))
    dataset_id = f"odmarl/{robot}/{quality}-v0"
    with staged_store(dataset_id) as staging:  # Minari writes into a staging store; the whole dataset is then renamed in
        with env_var("MINARI_DATASETS_PATH", str(staging)):
            minari.create_dataset_from_buffers(
                dataset_id, episodes, env=env.gym_id, algorithm_name=f"SAC actors of envs/behavior/weights ({'+'.join(levels)})",
                author="offline-decentralized-marl", author_email="-", code_permalink="envs/minari_split.py",
                description=__doc__.split("\n\n")[-1].strip(), data_format="hdf5",
                ref_min_score=mamujoco.TASKS[env_id]["d4rl_random"], ref_max_score=mamujoco.TASKS[env_id]["d4rl_expert"],
            )
    return dataset_id


@contextlib.contextmanager
def env_var(name: str, value: str):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


@contextlib.contextmanager
def staged_store(dataset_id: str):
    """A staging Minari store beside the real one (`<store>.staging-<pid>`); when the body has written `dataset_id`
    there, its folder replaces the store's in one rename (and the staging's namespace files fill those the store
    lacks). A build that fails or is killed leaves the store as it was; a dead build's staging is removed on the next."""
    import minari.storage

    root = minari.storage.get_dataset_path().resolve()
    for old in root.parent.glob(f"{root.name}.staging-*"):  # builds that died
        pid = old.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(old, ignore_errors=True)
    staging = root.parent / f"{root.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        for meta in staging.rglob("namespace_metadata.json"):
            target = root / meta.relative_to(staging)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(meta, target)
        final = root / dataset_id
        final.parent.mkdir(parents=True, exist_ok=True)
        replaced = staging / "replaced"  # the dataset this build replaces, removed with the staging store
        if final.exists():
            os.replace(final, replaced)
        os.replace(staging / dataset_id, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    import argparse
    import warnings

    from tqdm import tqdm

    import envs

    warnings.filterwarnings("ignore", module="minari")
    parser = argparse.ArgumentParser(description="Build a D4RL-like Minari dataset from the shipped SAC actors.")
    parser.add_argument("--robot", required=True, choices=list(ROBOTS))
    parser.add_argument("--quality", required=True, choices=list(QUALITIES))
    parser.add_argument("--n-steps", type=int, default=1_000_000, help="transitions per policy (medium-expert has twice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episode-len", type=int, default=1000)
    parser.add_argument("--behavior-dir", default="", help="folder holding <env id>/{intermediate,expert}.pt (default: the shipped ones)")
    args = parser.parse_args()
    try:
        with tqdm(desc=f"{args.robot} {args.quality}", unit=" steps", unit_scale=True) as bar:
            print(build(args.robot, args.quality, args.n_steps, args.seed, args.behavior_dir, args.episode_len, bar))
    except ValueError as e:
        raise envs.InputError(str(e)) from None
