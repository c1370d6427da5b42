"""A user's own per-agent offline data: `data:<folder>` (docs/own-data.md).

    python matd3bc.py --env-id data:/path/to/folder            # check it, copy it into the dataset dir (once), train
    python -m envs.collect --env-id data:/path/to/folder       # check and copy it ahead of time

The folder (a path, relative to the working directory or absolute) holds `meta.json` and one `agent_<i>.npz` per
agent (numpy's `np.savez`), agent i's own transitions, row by row:

    obs      float32 [n, obs_dim_i]     next_obs  float32 [n, obs_dim_i]     rewards  float32 [n]
    actions  float32 [n, act_dim_i] in [-1, 1]  (discrete: int64 [n], the action's index in [0, n_actions_i))
    dones    bool [n]  a true terminal: nothing follows (no bootstrap)
    timeouts bool [n]  the episode was cut here (time limit, end of the log): it bootstraps; never both
    states   float32 [n, state_dim]  optional, all files or none: the global state of the step (analysis only)
    avail_actions, next_avail_actions  bool [n, n_actions_i]  discrete only: the allowed actions at obs and next_obs

`meta.json`: {"n_agents": N, "discrete": false} and optionally "obs_dims" and "act_dims" (lists, checked against the
files), "aligned" (true: row k of every file is the same step of the same joint episode, i.e. jointly logged data
split per agent; checked: the same number of rows, dones and timeouts, and states if given), "eval_env" (below,
default none) and "description" (free text). Other keys are refused (a typo would otherwise be ignored).

`eval_env`, where the learned team is evaluated:
    {"type": "mamujoco", "robot": "HalfCheetah", "agent_conf": "2x3", "agent_obsk": 1}
        gymnasium-robotics' MaMuJoCo (envs/vault.py's LocalMuJoCo): every agent observes mamujoco's local observation
        (float32; zero-padded to the largest agent if the files' widths are that), the joint action is mamujoco's
        partition of the agents' actions, the team reward; D4RL-normalised scores for HalfCheetah, Walker2d, Hopper, Ant;
    {"type": "pettingzoo", "make": "mpe2.simple_spread_v3:parallel_env", "kwargs": {"N": 2, "continuous_actions": true}}
        a PettingZoo parallel env by import path, agents in `possible_agents` order: observations flattened to float32
        (a dict observation: its "observation", with "action_mask" as the allowed actions), continuous actions mapped
        from [-1, 1] onto the env's Box, the team reward the mean of the acting agents' rewards, an episode over when
        the env has no agent left;
    null (the default): no evaluation. The scripts then log the value metrics only (docs/own-data.md).
Both take "episode_len" (default 1000): the evaluation episodes' length (env option `eval_episode_len`).

The folder is only read. Its checks run before anything is written (meta.json, every file there, the arrays' names,
dtypes and shapes from the npz headers, `aligned`), then each agent's values as it is copied (NaN/inf, actions in
range and allowed by their mask, no step both done and timeout): refusals are one line naming the file and the fix.
The copy is an ordinary dataset folder (envs/dataset.py) keyed by the data's content (recipe option `data_sha256`,
the SHA-256 of the agent files and of meta.json's n_agents, discrete and aligned), so edited data get a new copy.

The value difference (Table 6) compares the agents' values at common states: `observe(states)` gives agent i's view of
a state as its own observation on a row of its file where that state was logged (its obs, if they equal its states).
With `states` every agent's view of every logged state must be in its file (refused otherwise); without them, aligned
data use the row number as the state (row k is one moment of every agent). Unaligned data without states have no
common states: the env has no `observe`.
"""

import hashlib
import importlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREFIX = "data:"
PINNED_PACKAGES = ()  # the data are what the files hold
RECIPE_DEFAULTS = dict(data_sha256="")
META_KEYS = ("n_agents", "discrete", "obs_dims", "act_dims", "aligned", "eval_env", "description")
EVAL_KEYS = {"mamujoco": ("type", "robot", "agent_conf", "agent_obsk", "episode_len"),
             "pettingzoo": ("type", "make", "kwargs", "episode_len")}
FIX = "see docs/own-data.md"
ROW_STATES_MAX = 2**24  # row numbers as float32 states are exact up to here


def folder_of(env_id: str) -> Path:
    """`data:<folder>` -> the folder; refused if the id would place its copy outside the dataset dir."""
    folder = env_id[len(PREFIX):] if env_id.startswith(PREFIX) else ""
    if not folder.strip():
        raise ValueError(f"{env_id!r} names no folder: use data:<folder>, e.g. data:/home/me/logs ({FIX})")
    if os.path.normpath(env_id).startswith(".."):  # the copy lives at <dataset dir>/<env id>-<hash>
        raise ValueError(f"{env_id}: the path climbs out of its own name with `..`; give the folder as an absolute path")
    return Path(folder)


# ---- the folder's layout, from meta.json and the npz headers (no array is read) ----
@dataclass
class Layout:
    env_id: str
    folder: Path
    n_agents: int
    discrete: bool
    obs_dims: list
    act_dims: list
    sizes: list
    state_dim: int  # the files' states width; 0 without states
    aligned: bool
    eval_env: dict | None
    episode_len: int

    @property
    def files(self) -> list[Path]:
        return [self.folder / f"agent_{i}.npz" for i in range(self.n_agents)]


def npz_headers(path: Path) -> dict:
    """{array name: (shape, dtype)} of an .npz from the headers of its members, without reading the arrays."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if not name.endswith(".npy"):
                continue
            with z.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    shape, _, dtype = np.lib.format._read_array_header(f, version)
            out[name[: -len(".npy")]] = (tuple(int(d) for d in shape), np.dtype(dtype))
    return out


def expected_arrays(discrete: bool) -> dict:
    """name -> (dtype, dimensions) of the arrays every agent file holds."""
    out = dict(obs=(np.float32, 2), next_obs=(np.float32, 2), rewards=(np.float32, 1), dones=(np.bool_, 1),
               timeouts=(np.bool_, 1))
    if discrete:
        out.update(actions=(np.int64, 1), avail_actions=(np.bool_, 2), next_avail_actions=(np.bool_, 2))
    else:
        out.update(actions=(np.float32, 2))
    return out


def cast_hint(key: str, dtype) -> str:
    return f"save it as {np.dtype(dtype)} ({key}.astype(np.{np.dtype(dtype).name}))"


def check_headers(file: Path, discrete: bool) -> dict:
    """The arrays of one agent file have the names, dtypes and dimensions of the format; returns their headers."""
    try:
        headers = npz_headers(file)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        raise ValueError(f"cannot read {file} ({type(e).__name__}: {e}); write it with np.savez ({FIX})") from None
    wanted = expected_arrays(discrete)
    missing = [k for k in wanted if k not in headers]
    if missing:
        kind = "discrete" if discrete else "continuous"
        raise ValueError(f"{file} lacks {', '.join(missing)}; an agent file of {kind} actions holds "
                         f"{', '.join(wanted)} (and optionally states) ({FIX})")
    if "states" in headers:
        wanted["states"] = (np.float32, 2)
    if len(headers["rewards"][0]) != 1:
        raise ValueError(f"{file}: `rewards` has shape {list(headers['rewards'][0])}, expected [n]: one reward per transition "
                         f"({FIX})")
    n = headers["rewards"][0][0]
    if n == 0:
        raise ValueError(f"{file} holds no transitions ({FIX})")
    for key, (dtype, ndim) in wanted.items():
        shape, got = headers[key]
        if got.hasobject:
            raise ValueError(f"{file}: `{key}` is an object array; save a plain {np.dtype(dtype)} array ({FIX})")
        if got != dtype:
            raise ValueError(f"{file}: `{key}` is {got}, expected {np.dtype(dtype)}: {cast_hint(key, dtype)}")
        if len(shape) != ndim or shape[0] != n or (ndim == 2 and shape[1] == 0):
            want = "[n]" if ndim == 1 else "[n, width >= 1]"
            raise ValueError(f"{file}: `{key}` has shape {list(shape)}, expected {want} with n = {n} rows (the rewards'); "
                             f"one row per transition ({FIX})")
    pairs = (("obs", "next_obs"), ("avail_actions", "next_avail_actions")) if discrete else (("obs", "next_obs"),)
    for a, b in pairs:
        if headers[a][0] != headers[b][0]:
            raise ValueError(f"{file}: `{a}` is {list(headers[a][0])} but `{b}` {list(headers[b][0])}; they must match ({FIX})")
    return headers


def read_meta(folder: Path, env_id: str) -> dict:
    if not folder.is_dir():
        raise ValueError(f"{env_id}: no folder {folder} (relative to {Path.cwd()}); {FIX}")
    path = folder / "meta.json"
    if not path.is_file():
        raise ValueError(f"{env_id}: no meta.json in {folder}; write one, e.g. {{\"n_agents\": 2, \"discrete\": false}} ({FIX})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__}: {e}); {FIX}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object like {{\"n_agents\": 2, \"discrete\": false}} ({FIX})")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; meta.json takes {', '.join(META_KEYS)} ({FIX})")
    n = meta.get("n_agents")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{path}: n_agents must be an integer >= 1, got {n!r} ({FIX})")
    if not isinstance(meta.get("discrete"), bool):
        raise ValueError(f"{path}: discrete must be true or false, got {meta.get('discrete')!r} ({FIX})")
    if not isinstance(meta.get("aligned", False), bool):
        raise ValueError(f"{path}: aligned must be true or false, got {meta.get('aligned')!r} ({FIX})")
    return meta


def check_eval_env(spec, path: Path) -> tuple[dict | None, int]:
    """meta.json's eval_env, checked for its keys and their kinds; (spec or None, evaluation episode length)."""
    if spec is None:
        return None, 1000
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in EVAL_KEYS:
        raise ValueError(f"{path}: eval_env must be null or an object with \"type\" mamujoco or pettingzoo, got {spec!r} ({FIX})")
    unknown = sorted(set(spec) - set(EVAL_KEYS[kind]))
    if unknown:
        raise ValueError(f"{path}: eval_env of type {kind} has unknown keys {unknown}; it takes {', '.join(EVAL_KEYS[kind])}")
    episode_len = spec.get("episode_len", 1000)
    if isinstance(episode_len, bool) or not isinstance(episode_len, int) or episode_len < 1:
        raise ValueError(f"{path}: eval_env episode_len must be an integer >= 1, got {episode_len!r}")
    if kind == "mamujoco":
        for key in ("robot", "agent_conf"):
            if not isinstance(spec.get(key), str):
                raise ValueError(f"{path}: a mamujoco eval_env needs \"{key}\" (a string), e.g. "
                                 "{\"type\": \"mamujoco\", \"robot\": \"HalfCheetah\", \"agent_conf\": \"2x3\", \"agent_obsk\": 1}")
        obsk = spec.get("agent_obsk", 1)
        if isinstance(obsk, bool) or not isinstance(obsk, int) or obsk < 0:
            raise ValueError(f"{path}: eval_env agent_obsk must be an integer >= 0, got {obsk!r}")
    else:
        if not isinstance(spec.get("make"), str) or ":" not in spec["make"]:
            raise ValueError(f"{path}: a pettingzoo eval_env needs \"make\": \"<module>:<function>\" returning a parallel env, "
                             f"e.g. \"mpe2.simple_spread_v3:parallel_env\", got {spec.get('make')!r}")
        if not isinstance(spec.get("kwargs", {}), dict):
            raise ValueError(f"{path}: eval_env kwargs must be an object of keyword arguments, got {spec.get('kwargs')!r}")
    return spec, episode_len


_LAYOUTS: dict = {}  # (folder, its files' names, sizes and mtimes) -> Layout: the headers are read once per process


def describe(env_id: str) -> Layout:
    """The folder's layout, every check that needs no array values; one-line ValueErrors."""
    folder = folder_of(env_id)
    meta = read_meta(folder, env_id)
    path = folder / "meta.json"
    n, discrete = meta["n_agents"], meta["discrete"]
    files = [folder / f"agent_{i}.npz" for i in range(n)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)}; meta.json's n_agents {n} means agent_0.npz .. agent_{n - 1}.npz")
    extra = sorted(p.name for p in folder.glob("agent_*.npz") if p not in files)
    if extra:
        raise ValueError(f"{folder} holds {', '.join(extra)} beyond meta.json's n_agents {n}; fix n_agents or remove them")
    key = (env_id, str(folder.resolve()), path.stat().st_mtime_ns, tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    headers = [check_headers(f, discrete) for f in files]
    obs_dims = [h["obs"][0][1] for h in headers]
    act_dims = [h["avail_actions"][0][1] if discrete else h["actions"][0][1] for h in headers]
    sizes = [h["rewards"][0][0] for h in headers]
    for name, dims in (("obs_dims", obs_dims), ("act_dims", act_dims)):
        given = meta.get(name)
        if given is not None and given != dims:
            what = "number of actions" if discrete and name == "act_dims" else "width"
            raise ValueError(f"{path}: {name} {given} but the files' {what}s are {dims}; fix meta.json or drop {name}")
    with_states = [("states" in h) for h in headers]
    if any(with_states) and not all(with_states):
        raise ValueError(f"{folder}: {', '.join(f.name for f, s in zip(files, with_states) if s)} hold states, the others "
                         "not; give states in every agent file or in none")
    state_dims = {h["states"][0][1] for h in headers if "states" in h}
    if len(state_dims) > 1:
        raise ValueError(f"{folder}: the agents' states have different widths {sorted(state_dims)}; one global state per step")
    aligned = meta.get("aligned", False) or n == 1  # one agent: its rows are trivially every agent's
    if aligned and len(set(sizes)) > 1:
        raise ValueError(f"{path}: aligned is true, but the agent files hold {sizes} rows; aligned files hold the same "
                         "joint episodes row by row (or set aligned to false)")
    if aligned and not state_dims and sizes[0] > ROW_STATES_MAX:
        raise ValueError(f"{folder}: more than {ROW_STATES_MAX} rows per agent without states; add `states` to the files")
    eval_env, episode_len = check_eval_env(meta.get("eval_env"), path)
    layout = Layout(env_id, folder, n, discrete, obs_dims, act_dims, sizes, state_dims.pop() if state_dims else 0,
                    aligned, eval_env, episode_len)
    _LAYOUTS[key] = layout
    return layout


_HASHES: dict = {}


def content_sha256(layout: Layout) -> str:
    """SHA-256 (16 hex digits) of the agent files' bytes and of meta.json's n_agents, discrete and aligned: what the
    copy is made of. Hashed once per process (keyed by the files' sizes and mtimes)."""
    files = layout.files
    key = (tuple(str(f.resolve()) for f in files), tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files),
           layout.discrete, layout.aligned)
    if key not in _HASHES:
        digest = hashlib.sha256(json.dumps(dict(n_agents=layout.n_agents, discrete=layout.discrete,
                                                aligned=layout.aligned), sort_keys=True).encode())
        for f in files:
            digest.update(f.name.encode() + b"\0")
            with open(f, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _HASHES[key] = digest.hexdigest()[:16]
    return _HASHES[key]


def load_arrays(file: Path, names=None) -> dict:
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files if names is None or k in names}
    except Exception as e:  # numpy and zipfile raise many kinds on a damaged file
        raise ValueError(f"cannot read {file} ({type(e).__name__}: {e}); write it with np.savez ({FIX})") from None


# ---- the value difference's states ----
def row_keys(states: np.ndarray) -> np.ndarray:
    """Each row of a [n, d] array as one opaque key (its bytes), for exact lookups."""
    states = np.ascontiguousarray(states)
    return states.view(np.dtype((np.void, states.dtype.itemsize * states.shape[1]))).ravel()


class View:
    """Agent i's view of the states of the data: its own observation on a row of its file where the state was logged
    (identity when its observations are its states; the row itself for row-number states)."""

    def __init__(self, layout: Layout, agent_id: int):
        arrays = load_arrays(layout.files[agent_id], ("obs", "states"))
        self.obs, self.agent_id, self.file = arrays["obs"], agent_id, layout.files[agent_id]
        self.rows = "states" not in arrays  # aligned data without states: the state is the row number
        states = arrays.get("states")
        self.identity = states is not None and states.shape == self.obs.shape and np.array_equal(states, self.obs)
        if not (self.rows or self.identity):
            self.keys = row_keys(states)
            self.order = np.argsort(self.keys, kind="stable")
            self.sorted = self.keys[self.order]

    def find(self, states: np.ndarray):
        """(rows of this file holding each state, found mask)."""
        keys = row_keys(np.asarray(states, dtype=np.float32))
        pos = np.minimum(np.searchsorted(self.sorted, keys), len(self.sorted) - 1)
        return self.order[pos], self.sorted[pos] == keys

    def __call__(self, states: np.ndarray) -> np.ndarray:
        states = np.asarray(states, dtype=np.float32)
        if self.identity:
            return states.copy()
        if self.rows:
            return self.obs[states[:, 0].astype(np.int64)]
        rows, found = self.find(states)
        if not found.all():
            raise ValueError(f"agent {self.agent_id} never logged a state it is asked to view ({self.file} has no row with "
                             "it); the value difference needs every agent's view of every state")
        return self.obs[rows]


class Views:
    """observe(states): every agent's view, each computed (and its file read) when first asked for."""

    def __init__(self, env, states):
        self.env, self.states = env, states

    def __len__(self):
        return self.env.n_agents

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.env.view(i)(self.states)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# ---- evaluation envs ----
class PettingZooEval:
    """A PettingZoo parallel env by import path, one instance per episode of the batch (see the module docstring)."""

    def __init__(self, spec: dict, layout: Layout, eval_episode_len: int, where: str):
        import gymnasium

        module, _, attribute = spec["make"].partition(":")
        where = f"{where} {spec['make']}"
        try:
            factory = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{where} cannot be imported ({type(e).__name__}: {e}); install its package or fix the path") from None
        kwargs = spec.get("kwargs", {})
        self._make = lambda: factory(**kwargs)
        try:
            probe = self._make()
            self.agents = list(probe.possible_agents)
            obs_spaces = [probe.observation_space(a) for a in self.agents]
            act_spaces = [probe.action_space(a) for a in self.agents]
        except Exception as e:  # a user's env and its kwargs can raise anything
            raise ValueError(f"{where}(**{kwargs}) failed ({type(e).__name__}: {e})") from None
        if len(self.agents) != layout.n_agents:
            raise ValueError(f"{where} has {len(self.agents)} agents {self.agents}, the data {layout.n_agents}")
        self.discrete = layout.discrete
        self.n_agents, self.eval_episode_len = layout.n_agents, eval_episode_len
        self.masked = [isinstance(s, gymnasium.spaces.Dict) and "observation" in s.spaces for s in obs_spaces]
        self.obs_spaces = [s["observation"] if m else s for s, m in zip(obs_spaces, self.masked)]
        try:  # Box as it is, Discrete one-hot, ...: gymnasium's flattening
            self.obs_dims = [int(gymnasium.spaces.flatdim(s)) for s in self.obs_spaces]
        except Exception as e:  # gymnasium raises for spaces it cannot flatten
            raise ValueError(f"{where}: observations of spaces {self.obs_spaces} cannot be flattened ({e})") from None
        self._flatten = gymnasium.spaces.flatten
        kind = gymnasium.spaces.Discrete if layout.discrete else gymnasium.spaces.Box
        if not all(isinstance(s, kind) for s in act_spaces):
            raise ValueError(f"{where}: the data's actions are {'discrete' if layout.discrete else 'continuous'}, "
                             f"the env's spaces are {act_spaces}")
        if layout.discrete:
            self.act_dims = [int(s.n) for s in act_spaces]
        else:
            self.act_dims = [int(np.prod(s.shape)) for s in act_spaces]
            self.low = [np.broadcast_to(s.low, s.shape).astype(np.float64) for s in act_spaces]
            self.high = [np.broadcast_to(s.high, s.shape).astype(np.float64) for s in act_spaces]
            if not all(np.isfinite(lo).all() and np.isfinite(hi).all() for lo, hi in zip(self.low, self.high)):
                raise ValueError(f"{where}: continuous action spaces must be bounded, got {act_spaces}")
            self.shapes = [s.shape for s in act_spaces]
            self.dtypes = [s.dtype for s in act_spaces]
        self._envs = [probe]

    def reset(self, n_envs: int, rng: np.random.Generator) -> list[np.ndarray]:
        while len(self._envs) < n_envs:
            self._envs.append(self._make())
        self.n_envs = n_envs
        self.alive = np.ones(n_envs, dtype=bool)
        self._obs = [np.zeros((n_envs, d), dtype=np.float32) for d in self.obs_dims]
        self._avail = [np.ones((n_envs, d), dtype=bool) for d in self.act_dims] if self.discrete else None
        for k in range(n_envs):
            observations, infos = self._envs[k].reset(seed=int(rng.integers(2**31)))
            self._record(k, observations, infos)
        return [o.copy() for o in self._obs]

    def _record(self, k: int, observations: dict, infos: dict) -> None:
        for i, agent in enumerate(self.agents):
            o = observations.get(agent)
            mask = None
            if o is None:  # gone: zeros, and only its first action allowed (never sent)
                self._obs[i][k] = 0
                if self.discrete:
                    self._avail[i][k] = np.arange(self.act_dims[i]) == 0
                continue
            if self.masked[i]:
                o, mask = o["observation"], o.get("action_mask")
            self._obs[i][k] = self._flatten(self.obs_spaces[i], o)
            if self.discrete:
                mask = mask if mask is not None else (infos.get(agent) or {}).get("action_mask")
                self._avail[i][k] = True if mask is None else np.asarray(mask, dtype=bool)

    def _action(self, i: int, a):
        if self.discrete:
            return int(a)
        a = np.clip(np.asarray(a, dtype=np.float64).reshape(self.shapes[i]), -1.0, 1.0)
        return (self.low[i] + (a + 1) / 2 * (self.high[i] - self.low[i])).astype(self.dtypes[i])

    def step(self, actions: list[np.ndarray]):
        reward, terminated = np.zeros(self.n_envs, dtype=np.float32), ~self.alive.copy()
        for k in np.flatnonzero(self.alive):
            env = self._envs[k]
            acting = [(i, agent) for i, agent in enumerate(self.agents) if agent in env.agents]
            observations, rewards, _, _, infos = env.step({agent: self._action(i, actions[i][k]) for i, agent in acting})
            reward[k] = np.mean([rewards.get(agent, 0.0) for _, agent in acting]) if acting else 0.0
            self._record(k, observations, infos)
            if not env.agents:
                self.alive[k] = False
                terminated[k] = True
        return [o.copy() for o in self._obs], reward, terminated

    def avail_actions(self) -> list[np.ndarray]:
        return [m.copy() for m in self._avail]


def make_evaluator(layout: Layout, eval_episode_len: int):
    """The evaluation env meta.json names, its agents checked against the data; None without one."""
    spec = layout.eval_env
    if spec is None:
        return None
    where = f"{layout.folder / 'meta.json'}: eval_env"
    if spec["type"] == "mamujoco":
        if layout.discrete:
            raise ValueError(f"{where} is MaMuJoCo (continuous actions) but the data are discrete")
        from envs.vault import LocalMuJoCo

        robot, conf, obsk = spec["robot"], spec["agent_conf"], spec.get("agent_obsk", 1)
        try:
            env = LocalMuJoCo(robot, conf, obsk, eval_episode_len=eval_episode_len)
        except Exception as e:  # gymnasium and gymnasium-robotics raise many kinds for an unknown robot or partition
            raise ValueError(f"{where} MaMuJoCo {robot} {conf} (agent_obsk {obsk}) cannot be made "
                             f"({type(e).__name__}: {e})") from None
        if env.n_agents != layout.n_agents or env.act_dims != layout.act_dims:
            raise ValueError(f"{where} MaMuJoCo {robot} {conf} has {env.n_agents} agents acting on {env.act_dims} joints, "
                             f"the data {layout.n_agents} agents with actions {layout.act_dims}")
        if layout.obs_dims != env.local_dims:
            if layout.obs_dims != [env.padded_dim] * env.n_agents:
                raise ValueError(f"{where} MaMuJoCo {robot} {conf} (agent_obsk {obsk}) observes {env.local_dims} numbers "
                                 f"per agent, the data {layout.obs_dims}")
            env.padded, env.obs_dims = True, [env.padded_dim] * env.n_agents  # OG-MARL's zero-padded observations
        return env
    env = PettingZooEval(spec, layout, eval_episode_len, where)
    if env.obs_dims != layout.obs_dims or env.act_dims != layout.act_dims:
        what = "actions" if layout.discrete else "action widths"
        raise ValueError(f"{where} {spec['make']} observes {env.obs_dims} numbers with {what} {env.act_dims} per agent, "
                         f"the data {layout.obs_dims} and {layout.act_dims}")
    return env


DELEGATED = ("normalized_score", "won")  # what the scripts look for with hasattr, answered by the evaluation env


class DataEnv:
    """The env of `data:<folder>`: the data's agents and dims, the value difference's `observe`, and the evaluation env
    meta.json names (reset, step, avail_actions, normalized_score are its own), or none: `evaluates` is False."""

    def __init__(self, layout: Layout, eval_episode_len: int = 1000):
        if eval_episode_len <= 0:
            raise ValueError(f"{layout.env_id}: --eval-episode-len must be > 0, got {eval_episode_len}")
        self.env_id, self.layout = layout.env_id, layout
        self.n_agents, self.discrete = layout.n_agents, layout.discrete
        self.obs_dims, self.act_dims = list(layout.obs_dims), list(layout.act_dims)
        self.state_dim = layout.state_dim or (1 if layout.aligned else 0)  # 1: the row number
        self.eval_episode_len = int(eval_episode_len)
        self.evaluator = make_evaluator(layout, self.eval_episode_len)
        self.evaluates = self.evaluator is not None
        self._views = {}
        if layout.state_dim or layout.aligned:
            self.observe = lambda states: Views(self, states)

    def __getattr__(self, name):  # normalized_score and won: the evaluation env's, if it has them
        evaluator = self.__dict__.get("evaluator")
        if evaluator is None or name not in DELEGATED:
            raise AttributeError(name)
        return getattr(evaluator, name)

    def _evaluator(self):
        if self.evaluator is None:
            import envs

            raise envs.InputError(f"{self.env_id} has no evaluation env (its meta.json names no eval_env), so the team cannot "
                                  f"be evaluated; name one in meta.json ({FIX})")
        return self.evaluator

    def reset(self, n_envs: int, rng: np.random.Generator) -> list[np.ndarray]:
        return self._evaluator().reset(n_envs, rng)

    def step(self, actions: list[np.ndarray]):
        return self._evaluator().step(actions)

    def avail_actions(self) -> list[np.ndarray]:
        return self._evaluator().avail_actions()

    def view(self, agent_id: int) -> View:
        if agent_id not in self._views:
            self._views[agent_id] = View(self.layout, agent_id)
        return self._views[agent_id]


# ---- the registry entry ----
def check_content(env: DataEnv, data_sha256: str) -> None:
    current = content_sha256(env.layout)
    if data_sha256 != current:
        raise ValueError(f"--data-sha256 {data_sha256} is not the content of {env.layout.folder} ({current}); leave it unset "
                         "(the default is the data's own)")


def check_rows(layout: Layout) -> None:
    """What needs the values across files: aligned files share dones, timeouts (and states); every logged state can be
    viewed through every agent's eyes (the value difference)."""
    if layout.aligned and layout.n_agents > 1:
        first = load_arrays(layout.files[0], ("dones", "timeouts", "states"))
        for file in layout.files[1:]:
            other = load_arrays(file, ("dones", "timeouts", "states"))
            for key in first:
                if not np.array_equal(first[key], other[key]):
                    raise ValueError(f"{layout.folder / 'meta.json'}: aligned is true, but {file.name}'s `{key}` differ from "
                                     f"{layout.files[0].name}'s; aligned files hold the same joint episodes row by row "
                                     "(or set aligned to false)")
    if not layout.state_dim or layout.aligned:  # aligned files share their states: every view holds every state
        return
    views = [View(layout, i) for i in range(layout.n_agents)]
    states = {i: load_arrays(f, ("states",))["states"] for i, f in enumerate(layout.files)}
    for i, view in enumerate(views):
        if view.identity:
            continue
        for j in range(layout.n_agents):
            if j == i:
                continue
            _, found = view.find(states[j])
            if not found.all():
                row = int(np.flatnonzero(~found)[0])
                raise ValueError(f"{layout.files[i]} has no row with the state of {layout.files[j].name}'s row {row}: the "
                                 "value difference needs every agent's view of every logged state; log the states "
                                 "jointly (the same states in every file), or leave `states` out")


def collect(env: DataEnv, agent_id: int, data_sha256: str = "", progress=None) -> dict:
    """Agent `agent_id`'s file, its values checked: what the dataset folder's copy holds."""
    import envs
    from envs import dataset

    check_content(env, data_sha256)
    file = env.layout.files[agent_id]
    data = load_arrays(file, (*expected_arrays(env.discrete), "states"))
    if "states" not in data and env.state_dim == 1:  # aligned, no states: the row number
        data["states"] = np.arange(len(data["rewards"]), dtype=np.float32)[:, None]
    try:
        dataset.validate(data, env, agent_id, str(file), fix=f"fix the file ({FIX})")
    except envs.InputError as e:
        raise ValueError(str(e.code).removeprefix("error: ")) from None
    if progress is not None:
        progress.update(len(data["rewards"]))
    return data


def dataset_summary(data: dict) -> dict:
    ends = np.flatnonzero(data["dones"] | data["timeouts"])
    starts = np.r_[0, ends[:-1] + 1]
    returns = np.add.reduceat(data["rewards"].astype(np.float64), starts) if len(ends) else np.array([])
    out = dict(transitions=int(len(data["rewards"])), episodes=int(len(ends)), terminated=int(data["dones"].sum()))
    if len(ends):
        out.update(return_mean=float(returns.mean()), return_std=float(returns.std()))
    return out


class Task:
    """`data:<folder>` behind the interface envs.REGISTRY expects of an env module."""

    PINNED_PACKAGES = PINNED_PACKAGES
    collect = staticmethod(collect)
    dataset_summary = staticmethod(dataset_summary)

    def __init__(self, env_id: str):
        import envs

        try:
            self.layout = describe(env_id)
        except ValueError as e:
            raise envs.InputError(str(e)) from None
        self.ENV_DEFAULTS = dict(eval_episode_len=self.layout.episode_len)
        self.RECIPE_DEFAULTS = dict(data_sha256=content_sha256(self.layout))

    def make(self, **env_kwargs) -> DataEnv:
        return DataEnv(self.layout, **env_kwargs)

    def preflight(self, env: DataEnv, recipe: dict) -> None:
        """The data are the ones the recipe names, and their rows fit `aligned` and `states`: before the copy is made."""
        check_content(env, recipe["data_sha256"])
        check_rows(env.layout)
