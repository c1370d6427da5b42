"""OG-MARL's vaults of multi-agent MuJoCo split per agent: `vault:<source>/<env>/<scenario>/<uid>`.

    python matd3bc.py --env-id vault:og_marl/gymnasium_mamujoco/2halfcheetah/Replay       # OG-MARL's download
    python -m envs.vault --scenario 2halfcheetah --quality expert --episodes 1000         # write one offline
    python matd3bc.py --env-id vault:odmarl/gymnasium_mamujoco/2halfcheetah/Expert
    python matd3bc.py --env-id vault:odmarl/gymnasium_mamujoco/2halfcheetah/Expert --obs central --no-vd --no-tn  # one TD3+BC

A vault (OG-MARL, instadeepai/og-marl; flashbax 0.1.3's `flashbax.vault.Vault`) is the folder
`<root>/<source>/<env>/<scenario>.vlt/<uid>/`: `metadata.json` and a tensorstore (zarr over OCDBT)
array per leaf of the experience, `[B, T, N, ...]`: `observations` (each agent's local observation,
zero-padded to the largest agent), `actions`, `rewards` (the team reward, copied per agent),
`terminals`, `truncations` (bool, or float32 in converted vaults) and `infos.state` (`[B, T, S]`, the
single-agent v5 observation). Row t is (o_t, a_t, r_t, flags of step t, state_t); an episode ends
on a row where every agent's terminal, or every agent's truncation, is set; the B rows are
independent streams. The root is OG-MARL's `vaults/` (relative to the working directory), or
`ODMARL_VAULT_DIR`.

Supported: the six `gymnasium_mamujoco` scenarios of OG-MARL (any source), evaluated as OG-MARL
does (og_marl/wrapped_environments/gymnasium_mamujoco.py): gymnasium_robotics'
`mamujoco_v1.parallel_env(robot, agent_conf, agent_obsk=1)`, observations cast to float32,
1000-step episodes, the team return summed over steps. Scores are the robot's D4RL-normalised
score (envs/mamujoco.py). Refused in one line: other environments (smac_v1/v2, the old mujoco-py
`mamujoco` vaults of og_marl, omar and omiga, mpe, flatland, rware), other scenarios, a missing
vault, and a vault whose layout does not fit its scenario (agents, padded widths, the state, the
local observations at episode starts, padding that is not zero, a reward that differs between
agents).

The split (agent i's file, envs/dataset.py): its own unpadded local observations (`--obs padded`:
OG-MARL's zero-padded ones), its own action, the team reward, `dones` from the terminals and
`timeouts` from the truncations, `next_obs` the next row's observation within the episode, `states`
the vault's `infos.state`. A vault holds no observation after an episode's last step (the next row
starts the next episode), so: an episode's last step that terminates is kept with next_obs = obs
(masked by done; a terminated MuJoCo episode stays frozen, envs/mamujoco.py), an episode's last step
that is only truncated is dropped and the step before it is the episode's timeout (its next_obs is
real, and timeouts bootstrap), a trailing partial episode of every stream is dropped. Actions are
clipped to [-1, 1] (MuJoCo clamps the controls to that range anyway). `episode_return` (analysis
only) holds the team return of the vault episode each transition is from, dropped step included.
Every agent's file comes from the same joint episodes: the data are split, not collected per agent.

The centralized reference on the same data (`--obs central`; the paper's Figure 1a/b): ONE agent whose
observation is the vault's `infos.state` (the single-agent v5 observation), whose action is the joint
action (every agent's action concatenated in agent order), with the team reward and the same episode
rules, rows and flags as the split; evaluated in the same MaMuJoCo env, its action split back to the
agents by mamujoco's partition. The vault's checks run over every agent's observations, as in the split.

The split is cached in the dataset folder, keyed by the vault's content: the recipe option
`vault_sha256` defaults to the SHA-256 (16 hex digits) of the vault's files, so a vault rewritten
under the same id gets a new folder; a value that is not the content of the vault on disk is refused.

Downloads are not reachable here, so `python -m envs.vault` writes vaults in OG-MARL's layout with
flashbax from the SAC actors shipped in envs/behavior/weights/ (single-agent SAC on the full v5 state
of the robot; the joint action is split by the scenario's partition): every agent acts in the same
episodes (CTDE data), the local observations are recorded as OG-MARL records them. Qualities:
`medium` every agent on the intermediate actor, `expert` every agent on the expert actor (both the
deterministic action plus N(0, noise_std^2) noise, clipped, as envs/recipes/mamujoco.py), `mixture`
each episode one of Appendix B's parts with its share: 20% every agent sampling the early actor, 35%
one agent (drawn per episode) intermediate and the others expert, 35% one agent expert and the others
intermediate, 10% every agent expert. Vaults go to `<out-dir>/<source>/gymnasium_mamujoco/<scenario>.vlt/<uid>`
(source `odmarl` by default, so they never shadow OG-MARL's downloads), written under a temporary uid
and renamed when complete.
"""

import contextlib
import hashlib
import io
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from envs import mamujoco

PINNED_PACKAGES = ("mujoco",)  # evaluation physics; the data are what the vault holds
ENV_DEFAULTS = dict(obs="local", eval_episode_len=1000)  # obs: "local" (agent i's own width), "padded" (OG-MARL's), "central"
OBS = ("local", "padded", "central")  # central: one agent, the state and the joint action (the centralized reference)
PREFIX = "vault:"
ENV_NAME = "gymnasium_mamujoco"
VAULT_DIR_ENV = "ODMARL_VAULT_DIR"
# OG-MARL's get_env_config (og_marl/wrapped_environments/gymnasium_mamujoco.py): scenario -> (robot, agent_conf);
# OG-MARL publishes gymnasium_mamujoco vaults of these six (uid Replay)
SCENARIOS = {
    "2ant": ("Ant", "2x4"),
    "2halfcheetah": ("HalfCheetah", "2x3"),
    "2walker": ("Walker2d", "2x3"),
    "3hopper": ("Hopper", "3x1"),
    "4ant": ("Ant", "4x2"),
    "6halfcheetah": ("HalfCheetah", "6x1"),
}
# robot -> the registered multi-agent env id holding its D4RL references and its shipped SAC actors
REFERENCE = {"HalfCheetah": "halfcheetah-2x3", "Walker2d": "walker2d-2x3", "Hopper": "hopper-3x1", "Ant": "ant-2x4"}
# the v5 observation (the state) clips the joint velocities of these robots, mamujoco's local observations do not
VELOCITY_CLIP = {"Hopper": 10.0, "Walker2d": 10.0}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
SUPPORTED = f"{ENV_NAME} vaults of scenarios {', '.join(SCENARIOS)} (OG-MARL's MaMuJoCo on gymnasium-robotics)"
EXAMPLE = "vault:og_marl/gymnasium_mamujoco/2halfcheetah/Replay"


def vault_root() -> Path:
    """Where vaults live: ODMARL_VAULT_DIR, else OG-MARL's `vaults/` in the working directory."""
    return Path(os.environ.get(VAULT_DIR_ENV) or "vaults")


def parse(env_id: str) -> tuple[str, str, str, str]:
    """`vault:<source>/<env>/<scenario>/<uid>` -> its four parts, or a one-line ValueError saying what is supported."""
    parts = env_id[len(PREFIX):].split("/") if env_id.startswith(PREFIX) else []
    if len(parts) != 4 or not all(NAME.fullmatch(p) and p.strip(".") for p in parts):
        raise ValueError(f"{env_id!r} is not a vault id: use vault:<source>/<env>/<scenario>/<uid>, e.g. {EXAMPLE}")
    source, env_name, scenario, uid = parts
    if env_name != ENV_NAME:
        why = (" (the old mamujoco vaults are mujoco-py MaMuJoCo: other physics and observations)" if env_name == "mamujoco"
               else "")
        raise ValueError(f"{env_id}: only {SUPPORTED} are supported, not {env_name!r}{why}")
    if scenario not in SCENARIOS:
        raise ValueError(f"{env_id}: only {SUPPORTED} are supported, not scenario {scenario!r}")
    return source, env_name, scenario, uid


def vault_path(root, source: str, scenario: str, uid: str) -> Path:
    """OG-MARL's layout: <root>/<source>/gymnasium_mamujoco/<scenario>.vlt/<uid>."""
    return Path(root) / source / ENV_NAME / f"{scenario}.vlt" / uid


# ---- the vault's content ----
_HASHES: dict = {}  # (folder, its files' names, sizes and mtimes) -> hash: one read of the bytes per process


def content_sha256(folder: Path) -> str:
    """SHA-256 (16 hex digits) of every file of a vault folder, names and bytes; "" if there is no such folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return ""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    key = (str(folder.resolve()), tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _HASHES:
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[key] = digest.hexdigest()[:16]
    return _HASHES[key]


def missing_message(env_id: str, path: Path) -> str:
    source, _, scenario, uid = parse(env_id)
    found = sorted(p.name for p in path.parent.iterdir() if p.is_dir()) if path.parent.is_dir() else []
    there = f" (that folder holds {', '.join(found)})" if found else ""
    if source == "og_marl":
        fix = ("download OG-MARL's vault (needs the internet: og_marl.vault_utils.download_vault) into "
               f"{path.parents[3]}, or point {VAULT_DIR_ENV} at the folder that holds og_marl/")
    else:
        fix = (f"write one with `python -m envs.vault --scenario {scenario} --quality expert --source {source} --uid {uid} "
               f"--out-dir {path.parents[3]}`, or point {VAULT_DIR_ENV} at the folder that holds {source}/")
    return f"no vault at {path}{there}: {fix}"


def open_vault(env_id: str, path: Path):
    """flashbax's Vault of an existing folder, its stdout kept quiet; a one-line ValueError if it cannot be read."""
    if not (path / "metadata.json").is_file():
        raise ValueError(missing_message(env_id, path))
    from flashbax.vault import Vault

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # flashbax prints where it found the vault
            return Vault(vault_name=path.parent.name, vault_uid=path.name, rel_dir=str(path.parent.parent.resolve()))
    except Exception as e:  # flashbax, json and tensorstore raise many kinds on a foreign or damaged folder
        raise ValueError(f"cannot read the vault at {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "it is not a flashbax vault, or a damaged one") from None


LEAVES = ("observations", "actions", "rewards", "terminals", "truncations")


def datastores(vault) -> dict:
    """The vault's tensorstores by leaf name (`state` for infos.state); flashbax 0.1.3 keeps them in `_all_datastores`."""
    stores = vault._all_datastores
    out = {k: stores[k] for k in LEAVES if k in stores}
    if isinstance(stores.get("infos"), dict) and "state" in stores["infos"]:
        out["state"] = stores["infos"]["state"]
    return out


def check_layout(env, vault) -> dict:
    """The vault's arrays fit the scenario: leaves, agents, widths, state, dtypes. Returns the datastores."""
    stores = datastores(vault)
    where = f"the vault at {env.vault_path}"
    missing = [k for k in (*LEAVES, "state") if k not in stores]
    if missing:
        names = ["infos.state" if k == "state" else k for k in missing]
        raise ValueError(f"{where} lacks {', '.join(names)}; a {ENV_NAME} vault holds {', '.join(LEAVES)} and infos.state")
    shape = lambda k: tuple(int(d) for d in stores[k].shape)  # noqa: E731  [B, time capacity, ...]
    n, a, s = env.scenario_agents, max(env.agent_act_dims), env.state_dim
    want = {"observations": (n, env.padded_dim), "actions": (n, a), "rewards": (n,), "terminals": (n,), "truncations": (n,),
            "state": (s,)}
    batch = shape("observations")[0]
    for key, tail in want.items():
        got = shape(key)
        if len(got) != 2 + len(tail) or got[2:] != tail or got[0] != batch:
            name = "infos.state" if key == "state" else key
            raise ValueError(
                f"{where} does not fit {env.scenario} ({env.robot} {env.agent_conf}: {n} agents, observations padded to "
                f"{env.padded_dim}, actions {a}, state {s}): its {name} are [B, T, {', '.join(map(str, got[2:]))}], "
                f"expected [B, T, {', '.join(map(str, tail))}]")
    for key in ("observations", "actions", "rewards", "state"):
        if stores[key].dtype.numpy_dtype.kind != "f":
            raise ValueError(f"{where}: {key} are {stores[key].dtype.numpy_dtype}, expected floats")
    for key in ("terminals", "truncations"):
        if stores[key].dtype.numpy_dtype.kind not in "bfiu":
            raise ValueError(f"{where}: {key} are {stores[key].dtype.numpy_dtype}, expected bool or 0/1 numbers")
    if vault.vault_index <= 0:
        raise ValueError(f"{where} is empty (its vault index is {vault.vault_index})")
    return stores


def flags(array: np.ndarray, name: str, where: str) -> np.ndarray:
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{where}: {name} hold values other than 0 and 1")
        array = array.astype(bool)
    return array


class LocalMuJoCo(mamujoco.MultiAgentMuJoCo):
    """gymnasium-robotics' MaMuJoCo with local observations, as OG-MARL evaluates it: one mamujoco_v1.parallel_env(robot,
    agent_conf, agent_obsk) per episode of the batch; its single-agent robot is stepped directly (as envs/mamujoco.py
    does; the gym wrappers change nothing) and every agent observes mamujoco's own local observation of it, cast to
    float32 (`padded`: zero-padded to the largest agent, OG-MARL's). The vaults' env (VaultMuJoCo) and the evaluation
    env of a user's own data (envs/userdata.py). A robot with D4RL references gets `normalized_score`."""

    def __init__(self, robot: str, agent_conf: str, agent_obsk: int = 1, padded: bool = False, eval_episode_len: int = 1000):
        from gymnasium_robotics import mamujoco_v1

        if eval_episode_len <= 0:
            raise ValueError(f"--eval-episode-len must be > 0, got {eval_episode_len}")
        mamujoco.route_mujoco_warnings()
        self.robot, self.agent_conf, self.agent_obsk, self.padded = robot, agent_conf, agent_obsk, padded
        self.gym_id = f"{robot}-v5"
        self.eval_episode_len = int(eval_episode_len)
        self._make_ma = lambda: mamujoco_v1.parallel_env(robot, agent_conf, agent_obsk=agent_obsk)
        probe = self._make_ma()
        agents = probe.possible_agents
        # mamujoco's factorisation: agent i drives joint-action entries partition[i]
        self.partition = [np.array([node.act_ids for node in part]) for part in probe.agent_action_partitions]
        self.action_index = list(self.partition)
        single = probe.single_agent_env
        self.joint_act_dim, self.state_dim = single.action_space.shape[0], single.observation_space.shape[0]
        self.n_agents = self.scenario_agents = len(agents)
        self.local_dims = [probe.observation_spaces[a].shape[0] for a in agents]
        self.padded_dim = max(self.local_dims)  # OG-MARL pads every agent's observation to this width
        # state index of every entry of an agent's local observation (mamujoco's observation_factorization)
        self.obs_index = [np.asarray(probe.observation_factorization[a]) for a in agents]
        self.obs_dims = [self.padded_dim] * self.n_agents if padded else list(self.local_dims)
        self.act_dims = self.agent_act_dims = [len(index) for index in self.partition]
        self._mas = [probe]
        self._sims = [single.unwrapped]
        if robot in REFERENCE:
            self.reference_env_id = REFERENCE[robot]  # D4RL references, shipped actors
            self.normalized_score = lambda returns: mamujoco.normalized_score(self.reference_env_id, returns)

    def reset(self, n_envs: int, rng: np.random.Generator) -> list[np.ndarray]:
        while len(self._mas) < n_envs:
            self._mas.append(self._make_ma())
            self._sims.append(self._mas[-1].single_agent_env.unwrapped)
        self.n_envs = n_envs
        self.state = np.zeros((n_envs, self.state_dim))
        self.terminated = np.zeros(n_envs, dtype=bool)
        self.reset_episodes(np.arange(n_envs), rng)
        return self.observations()

    def observations(self) -> list[np.ndarray]:
        """What the agents observe now (LocalMuJoCo: their local observations)."""
        return self.local_observations()

    def local_observations(self, padded: bool | None = None) -> list[np.ndarray]:
        """Every agent's mamujoco local observation of every episode, float32: N arrays [n_envs, obs_dim_i]."""
        padded = self.padded if padded is None else padded
        dims = [self.padded_dim] * self.scenario_agents if padded else self.local_dims
        out = [np.zeros((self.n_envs, d), dtype=np.float32) for d in dims]
        for k in range(self.n_envs):
            for i in range(self.scenario_agents):
                o = self._mas[k]._get_obs_agent(i)
                out[i][k, : len(o)] = o
        return out

    def step(self, actions: list[np.ndarray]):
        _, reward, terminated = self.step_joint(self.merge(actions))
        return self.observations(), reward, terminated

    def observe(self, states: np.ndarray) -> list[np.ndarray]:
        """Local observations from v5 states (the analysis states of the datasets) by mamujoco's observation mapping:
        exact, except Hopper's and Walker2d's joint velocities beyond +-10, which the state holds clipped."""
        states = np.asarray(states, dtype=np.float32)
        out = []
        for i, index in enumerate(self.obs_index):
            o = np.zeros((len(states), self.obs_dims[i]), dtype=np.float32)
            o[:, : len(index)] = states[:, index]
            out.append(o)
        return out


class VaultMuJoCo(LocalMuJoCo):
    """A vault's scenario in MaMuJoCo (agent_obsk=1), seen as `obs`: `local` or `padded` (every agent of the scenario
    observes its local observation), or `central`: one agent observing the state (the single-agent v5 observation, the
    vault's infos.state) and acting with the joint action, every agent's action concatenated in agent order; the
    environment splits it back to the agents (mamujoco's partition)."""

    def __init__(self, env_id: str, path: Path, obs: str = "local", eval_episode_len: int = 1000):
        if obs not in OBS:
            raise ValueError(f"{env_id}: --obs must be one of {', '.join(OBS)}, got {obs!r}")
        if eval_episode_len <= 0:
            raise ValueError(f"{env_id}: --eval-episode-len must be > 0, got {eval_episode_len}")
        _, _, self.scenario, _ = parse(env_id)
        super().__init__(*SCENARIOS[self.scenario], agent_obsk=1, padded=obs == "padded", eval_episode_len=eval_episode_len)
        self.env_id, self.vault_path, self.obs = env_id, Path(path), obs
        if obs == "central":  # one agent: the state, the joint action in agent order
            self.action_index = [np.concatenate(self.partition)]
            self.n_agents, self.obs_dims, self.act_dims = 1, [self.state_dim], [self.joint_act_dim]

    def observations(self) -> list[np.ndarray]:
        return [self.state.astype(np.float32)] if self.obs == "central" else self.local_observations()

    def observe(self, states: np.ndarray) -> list[np.ndarray]:
        if self.obs == "central":
            return [np.asarray(states, dtype=np.float32).copy()]
        return super().observe(states)


# ---- the split ----
def read_agent(env: VaultMuJoCo, agent_id: int, progress=None) -> dict:
    """Agent `agent_id`'s transitions of every stream of the vault (see the module docstring); with `obs="central"` the
    one agent's: the state, every agent's action concatenated in agent order. The vault's checks are the same in every
    view (in the central one they run over every agent's observations)."""
    vault = open_vault(env.env_id, env.vault_path)
    stores = check_layout(env, vault)
    where = f"the vault at {env.vault_path}"
    n = int(vault.vault_index)
    read = lambda key, *index: np.asarray(stores[key][(slice(None), slice(0, n), *index)].read().result())  # noqa: E731
    central = env.obs == "central"
    members = list(range(env.scenario_agents)) if central else [agent_id]  # the scenario's agents this file holds
    obs = {i: read("observations", i).astype(np.float32) for i in members}  # [B, T, padded] each
    actions = np.concatenate([read("actions", i)[..., : env.agent_act_dims[i]] for i in members], -1).astype(np.float32)
    rewards = read("rewards").astype(np.float32)  # [B, T, N]
    terminals, truncations = (flags(read(k), k, where) for k in ("terminals", "truncations"))
    states = read("state").astype(np.float32)  # [B, T, S]
    for name, array in (*(("observations", o) for o in obs.values()), ("actions", actions), ("rewards", rewards),
                        ("infos.state", states)):
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: {name} hold NaN or inf")
    for i in members:
        if (obs[i][..., env.local_dims[i]:] != 0).any():
            raise ValueError(f"{where} does not fit {env.scenario}: agent {i}'s observations are not zero beyond its "
                             f"{env.local_dims[i]} local numbers (OG-MARL pads with zeros)")
    if not (rewards == rewards[..., :1]).all():
        raise ValueError(f"{where}: the agents' rewards differ; a {ENV_NAME} vault holds the team reward for every agent")
    for name, array in (("terminals", terminals), ("truncations", truncations)):
        if (array.any(-1) != array.all(-1)).any():
            raise ValueError(f"{where}: {name} are set for some agents of a step but not all; MaMuJoCo's agents end together")
    parts = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "dones", "timeouts", "states", "episode_return")}
    clip = VELOCITY_CLIP.get(env.robot)
    for b in range(states.shape[0]):
        term, trunc = terminals[b, :, 0], truncations[b, :, 0]
        end = term | trunc
        ends = np.flatnonzero(end)
        starts = np.r_[0, ends + 1]
        starts = starts[starts < n]
        for i in members:  # the local observations at episode starts are mamujoco's agent_obsk=1 ones of the recorded state
            width, index = env.local_dims[i], env.obs_index[i]
            local, mapped = obs[i][b, starts, :width], states[b][starts][:, index]
            bad = ~np.isclose(local, mapped, rtol=1e-5, atol=1e-5)
            if clip is not None:  # the state clips these robots' joint velocities, the local observations do not
                bad &= ~((np.abs(mapped) == np.float32(clip)) & (np.abs(local) >= np.float32(clip)))
            if bad.any():
                row = starts[np.flatnonzero(bad.any(1))[0]]
                raise ValueError(f"{where} does not fit {env.scenario}: agent {i}'s observation at the episode start of "
                                 f"stream {b}, step {row} is not MaMuJoCo's local observation (agent_obsk=1) of the recorded state")
        if not len(ends):
            continue  # no whole episode in this stream
        last = ends[-1]
        keep = np.arange(last + 1)
        dropped = end & ~term  # an episode's last step that is only truncated: its next observation is not in the vault
        episode = np.r_[0, np.cumsum(end)[:-1]][keep]  # episode number of each kept row
        returns = np.bincount(episode, weights=rewards[b, keep, 0].astype(np.float64))
        next_row = np.where(end[keep], keep, keep + 1)  # terminal last steps: next_obs = obs (masked by done)
        timeouts = np.zeros(len(keep), dtype=bool)
        timeouts[:-1] = dropped[1 : last + 1] & ~end[:last]
        keep_mask = ~dropped[keep]
        if central:
            columns = states[b]
        else:
            columns = obs[agent_id][b] if env.obs == "padded" else obs[agent_id][b, :, : env.local_dims[agent_id]]
        parts["obs"].append(columns[keep][keep_mask])
        parts["next_obs"].append(columns[next_row][keep_mask])
        parts["actions"].append(np.clip(actions[b, keep], -1.0, 1.0)[keep_mask])
        parts["rewards"].append(rewards[b, keep, 0][keep_mask])
        parts["dones"].append((end & term)[keep][keep_mask])
        parts["timeouts"].append(timeouts[keep_mask])
        parts["states"].append(states[b, keep][keep_mask])
        parts["episode_return"].append(returns[episode].astype(np.float32)[keep_mask])
        if progress is not None:
            progress.update(int(keep_mask.sum()))
    if not parts["obs"] or not sum(len(p) for p in parts["obs"]):
        raise ValueError(f"{where} holds no whole episode (no step where every agent's terminal or truncation is set)")
    return {k: np.concatenate(v) for k, v in parts.items()}


def check_content(env: VaultMuJoCo, vault_sha256: str) -> None:
    current = content_sha256(env.vault_path)
    if not current:
        raise ValueError(missing_message(env.env_id, env.vault_path))
    if vault_sha256 != current:
        raise ValueError(f"--vault-sha256 {vault_sha256} is not the content of the vault at {env.vault_path} ({current}); "
                         "leave it unset (the default is the vault's own)")


def collect(env: VaultMuJoCo, agent_id: int, vault_sha256: str = "", progress=None) -> dict:
    """Agent `agent_id`'s share of every whole episode of the vault."""
    check_content(env, vault_sha256)
    return read_agent(env, agent_id, progress)


class Task:
    """`vault:<source>/<env>/<scenario>/<uid>` behind the interface envs.REGISTRY expects of an env module."""

    ENV_DEFAULTS = ENV_DEFAULTS
    PINNED_PACKAGES = PINNED_PACKAGES
    collect = staticmethod(collect)

    def __init__(self, env_id: str):
        import envs

        try:
            source, _, scenario, uid = parse(env_id)
        except ValueError as e:
            raise envs.InputError(str(e)) from None
        self.env_id = env_id
        self.robot = SCENARIOS[scenario][0]
        self.reference_env_id = REFERENCE[self.robot]  # the registered env id of the robot: D4RL references, presets
        self.path = vault_path(vault_root(), source, scenario, uid).absolute()
        # the dataset folder is keyed by the vault's content ("" without a vault: the env still evaluates)
        self.RECIPE_DEFAULTS = dict(vault_sha256=content_sha256(self.path))

    def make(self, **env_kwargs) -> VaultMuJoCo:
        return VaultMuJoCo(self.env_id, self.path, **env_kwargs)

    def preflight(self, env: VaultMuJoCo, recipe: dict) -> None:
        """The vault exists, is the one the recipe names and fits the scenario: checked before a dataset folder is made."""
        check_content(env, recipe["vault_sha256"])
        check_layout(env, open_vault(env.env_id, env.vault_path))

    def dataset_summary(self, data: dict) -> dict:
        ends = np.flatnonzero(data["dones"] | data["timeouts"])
        returns = data["episode_return"][ends].astype(np.float64)
        scores = mamujoco.normalized_score(REFERENCE[self.robot], returns)
        return dict(episodes=int(len(ends)), transitions=int(len(data["rewards"])), terminated=int(data["dones"].sum()),
                    return_mean=float(returns.mean()), return_std=float(returns.std()),
                    normalized_score_mean=float(scores.mean()))


# ---- writing vaults from the shipped SAC actors ----
QUALITIES = ("medium", "expert", "mixture")
MIXTURE = ((0.20, "early"), (0.35, "one-intermediate"), (0.35, "one-expert"), (0.10, "expert"))  # Appendix B's parts
PARALLEL_EPISODES = 64  # episodes run side by side: one batched actor call serves them all
WRITE_CHUNK = 100_000  # vault rows written at once


def draw_team(quality: str, n_agents: int, rng) -> list[str]:
    """The levels the agents play in one episode: ["early"] * N means every agent samples the early actor."""
    if quality in ("medium", "expert"):
        return [{"medium": "intermediate", "expert": "expert"}[quality]] * n_agents
    part = MIXTURE[rng.choice(len(MIXTURE), p=[share for share, _ in MIXTURE])][1]
    if part in ("early", "expert"):
        return [part] * n_agents
    one = int(rng.integers(n_agents))
    mine, others = ("intermediate", "expert") if part == "one-intermediate" else ("expert", "intermediate")
    return [mine if j == one else others for j in range(n_agents)]


def team_actions(env, actors, teams, states, noise_std, rng) -> np.ndarray:
    """Joint actions [n, joint_act_dim] (float32) of a batch of episodes, each with its own team of levels. Deterministic
    actions plus N(0, noise_std^2) noise, clipped; the early actor is sampled (as envs/recipes/mamujoco.py)."""
    import torch

    with torch.no_grad():
        x = torch.as_tensor(states, dtype=torch.float64)
        joint = np.empty((len(states), env.joint_act_dim))
        levels = {level for team in teams for level in team} - {"early"}
        means = {level: env.split(actors[level].act(x).numpy()) for level in sorted(levels)}
        sampled = np.array([team[0] == "early" for team in teams])
        for k, team in enumerate(teams):
            if not sampled[k]:
                joint[k] = env.merge([means[level][j][k] for j, level in enumerate(team)])
        joint = np.clip(joint + noise_std * rng.standard_normal(joint.shape), -1.0, 1.0)
        if sampled.any():
            noise = torch.as_tensor(rng.standard_normal((int(sampled.sum()), env.joint_act_dim)), dtype=torch.float64)
            joint[sampled] = actors["early"].act(x[torch.as_tensor(sampled)], noise).numpy()
    return joint.astype(np.float32)


def run_episodes(env: VaultMuJoCo, actors, quality: str, n_episodes: int, episode_len: int, noise_std: float, rng,
                 progress=None) -> list[dict]:
    """`n_episodes` joint episodes, each a dict of OG-MARL rows [T, ...]: observations (padded), actions, rewards,
    terminals, truncations (per agent) and state. Truncation as gymnasium's TimeLimit: on step `episode_len`."""
    episodes = []
    n_agents = env.n_agents
    for first in range(0, n_episodes, PARALLEL_EPISODES):
        n = min(PARALLEL_EPISODES, n_episodes - first)
        teams = [draw_team(quality, n_agents, rng) for _ in range(n)]
        env.reset(n, rng)
        rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "truncations", "state")}
        alive = np.ones(n, dtype=bool)
        length = np.zeros(n, dtype=int)
        for t in range(episode_len):
            observations = np.stack(env.local_observations(padded=True), axis=1)  # [n, N, padded]
            states = env.state.astype(np.float32)
            joint = team_actions(env, actors, teams, states, noise_std, rng)
            _, reward, terminated = env.step_joint(joint)
            rows["observations"].append(observations)
            rows["actions"].append(np.stack(env.split(joint), axis=1))
            rows["rewards"].append(np.repeat(reward[:, None], n_agents, 1).astype(np.float32))
            rows["terminals"].append(np.repeat(terminated[:, None], n_agents, 1))
            rows["truncations"].append(np.full((n, n_agents), t + 1 == episode_len))
            rows["state"].append(states)
            length += alive
            if progress is not None:
                progress.update(int(alive.sum()))
            alive &= ~terminated
            if not alive.any():
                break
        stacked = {k: np.stack(v, axis=1) for k, v in rows.items()}  # [n, T, ...]
        for k in range(n):
            episodes.append({key: value[k, : length[k]] for key, value in stacked.items()})
    return episodes


def write_vault(path: Path, episodes: list[dict], metadata: dict) -> None:
    """The episodes, one after the other in one stream (B = 1), written with flashbax into a vault at `path`: first under
    `<uid>.tmp-<pid>`, renamed when whole. A staging folder of a writer that died is removed."""
    from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
    from flashbax.vault import Vault

    for old in path.parent.glob(f"{path.name}.tmp-*") if path.parent.is_dir() else []:
        pid = old.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(old, ignore_errors=True)
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    rows = {k: np.concatenate([e[k] for e in episodes])[None] for k in episodes[0]}  # [1, T, ...]

    def experience(s: slice) -> dict:  # OG-MARL's tree: the state under infos
        return {**{k: v[:, s] for k, v in rows.items() if k != "state"}, "infos": {"state": rows["state"][:, s]}}

    total = rows["rewards"].shape[1]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # flashbax prints where it writes
            vault = Vault(vault_name=path.parent.name, vault_uid=staging.name, rel_dir=str(path.parent.parent.resolve()),
                          experience_structure=experience(slice(0, min(total, WRITE_CHUNK))), metadata=metadata)
            for start in range(0, total, WRITE_CHUNK):
                chunk = experience(slice(start, start + WRITE_CHUNK))
                size = chunk["rewards"].shape[1]
                vault.write(TrajectoryBufferState(experience=chunk, current_index=np.array(size), is_full=np.array(False)),
                            source_interval=(0, size))
        replaced = path.with_name(f"{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, replaced)
        os.replace(staging, path)
        shutil.rmtree(replaced, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build(scenario: str, quality: str, n_episodes: int = 1000, seed: int = 0, out_dir: str = "", source: str = "odmarl",
          uid: str = "", episode_len: int = 1000, noise_std: float = 0.1, behavior_dir: str = "", force: bool = False,
          progress=None) -> tuple[str, dict]:
    """Write a vault of `scenario` from the shipped SAC actors; returns its env id and a summary of its episodes."""
    import types

    import torch

    from envs.recipes.mamujoco import load_behavior

    if scenario not in SCENARIOS or quality not in QUALITIES:
        raise ValueError(f"--scenario takes {', '.join(SCENARIOS)} and --quality {', '.join(QUALITIES)}; got {scenario} {quality}")
    if n_episodes <= 0 or episode_len <= 0 or not noise_std >= 0:
        raise ValueError(f"--episodes and --episode-len must be > 0 and --noise-std >= 0, "
                         f"got {n_episodes}, {episode_len}, {noise_std}")
    uid = uid or quality.capitalize()
    env_id = f"{PREFIX}{source}/{ENV_NAME}/{scenario}/{uid}"
    parse(env_id)  # a source and uid that make a vault id
    path = vault_path(out_dir or vault_root(), source, scenario, uid).absolute()
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to replace it, or another --uid")
    env = VaultMuJoCo(env_id, path)
    # the actors are single-agent SAC on the robot's full v5 state: the same ones for every partition of the robot
    reference = types.SimpleNamespace(env_id=env.reference_env_id, state_dim=env.state_dim, joint_act_dim=env.joint_act_dim)
    actors = {level: actor.to(torch.float64) for level, actor in load_behavior(reference, behavior_dir).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of <= 64 states: more threads only contend with the simulation
    try:
        episodes = run_episodes(env, actors, quality, n_episodes, episode_len, noise_std, np.random.default_rng(seed), progress)
    finally:
        torch.set_num_threads(threads)
    returns = np.array([e["rewards"][:, 0].astype(np.float64).sum() for e in episodes])
    summary = dict(episodes=len(episodes), steps=int(sum(len(e["rewards"]) for e in episodes)),
                   terminated=int(sum(e["terminals"][-1, 0] for e in episodes)),
                   return_mean=float(returns.mean()), return_std=float(returns.std()),
                   normalized_score_mean=float(env.normalized_score(returns).mean()))
    weights = Path(behavior_dir or mamujoco.BEHAVIOR_DIR) / env.reference_env_id
    metadata = dict(written_by="envs/vault.py (offline-decentralized-marl)", scenario=scenario, robot=env.robot,
                    agent_conf=env.agent_conf, agent_obsk=1, quality=quality, seed=seed, episode_len=episode_len,
                    noise_std=noise_std, actors=str(weights), **summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_vault(path, episodes, metadata)
    return env_id, summary


if __name__ == "__main__":
    import argparse

    from tqdm import tqdm

    import envs

    parser = argparse.ArgumentParser(description="Write an OG-MARL vault of multi-agent MuJoCo from the shipped SAC actors.")
    parser.add_argument("--scenario", required=True, choices=list(SCENARIOS))
    parser.add_argument("--quality", required=True, choices=list(QUALITIES))
    parser.add_argument("--episodes", type=int, default=1000, help="joint episodes (1000 of 1000 steps: 1e6 transitions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="", help=f"vault root (default: ${VAULT_DIR_ENV}, else vaults/)")
    parser.add_argument("--source", default="odmarl", help="the vault's <source> folder (default odmarl)")
    parser.add_argument("--uid", default="", help="the vault's uid (default: the quality, capitalised)")
    parser.add_argument("--episode-len", type=int, default=1000, help="steps before a truncation (OG-MARL: 1000)")
    parser.add_argument("--noise-std", type=float, default=0.1, help="std of the Gaussian noise on the deterministic actions")
    parser.add_argument("--behavior-dir", default="",
                        help="folder holding <env id>/{early,intermediate,expert}.pt (default: the shipped ones)")
    parser.add_argument("--force", action="store_true", help="replace a vault of the same uid")
    args = parser.parse_args()
    try:
        with tqdm(desc=f"{args.scenario} {args.quality}", total=args.episodes * args.episode_len, unit=" steps", unit_scale=True,
                  file=sys.stderr) as bar:
            env_id, summary = build(args.scenario, args.quality, args.episodes, args.seed, args.out_dir, args.source, args.uid,
                                    args.episode_len, args.noise_std, args.behavior_dir, args.force, bar)
    except ValueError as e:
        raise envs.InputError(str(e)) from None
    print(env_id)
    print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
