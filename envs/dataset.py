"""Per-agent offline datasets: one `agent_<i>.npz` per agent plus `meta.json`, in a folder
`<dataset dir>/<env id>-<hash of env kwargs and recipe>` (`dataset_path`).

Agent i's file holds only its own transitions (o_i, a_i, r, o'_i, done, timeout) and,
for analysis only, the global `states` they were observed from. `done` marks a true
terminal state; a time-limit end is `timeout` and bootstraps like any other step.

`meta.json` (format 2) holds the env id, env kwargs and recipe, agents' dims, transitions
per agent, package versions, the behaviour-policy `fingerprint` of the recipe, a summary
per agent and `content_sha256` = {"agent_0.npz": "<sha256 of the file's bytes>", ...}, the
dataset's content fingerprint (what runs record; `content_fingerprint(folder)` computes it).

Building (`build`, `python -m envs.collect`) checks every option's range, the recipe's
inputs (`preflight`) and the dataset dir before anything is written; the folder is written
under `<name>.tmp-<pid>` and renamed when complete, so a folder that exists is whole, and
of two concurrent builders the first one's folder is kept. Temporary folders of builds
whose process died are removed by the next build of the same dataset.

Loading (`load`) refuses, in one line that gives a `python -m envs.collect ... --force`
command that rebuilds the dataset: a folder without meta.json, metadata of another env,
recipe, format, package version or behaviour policy, an agent file whose SHA-256 differs
from meta.json's (truncated, edited, swapped), and arrays with wrong shapes or dtypes,
NaN/inf, continuous actions outside [-1, 1], discrete actions out of range or not allowed
by their mask, or a step both `done` and `timeout`. A dataset of format 1 (before content
hashes; same arrays) is upgraded in place on its first load: its files are hashed once.
"""

import hashlib
import json
import os
import re
import platform
import shlex
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

import envs
from envs import InputError

FORMAT_VERSION = 2  # 2: meta.json holds content_sha256
DATASET_DIR_ENV = "ODMARL_DATASET_DIR"


def default_dataset_dir() -> str:
    return os.environ.get(DATASET_DIR_ENV, "datasets")


def dataset_path(dataset_dir: str, env_id: str, env_kwargs: dict, recipe: dict) -> Path:
    """`<dataset_dir>/<env_id>-<hash of env kwargs and recipe>`: another recipe, another folder."""
    key = json.dumps({"env_id": env_id, "env_kwargs": env_kwargs, "recipe": recipe}, sort_keys=True)
    return Path(dataset_dir) / f"{env_id}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def rebuild_command(env_id: str, env_kwargs: dict, recipe: dict, dataset_dir: str, module=None) -> str:
    """The `python -m envs.collect` line that rebuilds exactly this dataset (options that differ from the defaults)."""
    module = module or envs.env_module(env_id)
    options = [f"--{k.replace('_', '-')} {shlex.quote(str(v))}"
               for defaults, given in ((module.ENV_DEFAULTS, env_kwargs), (module.RECIPE_DEFAULTS, recipe))
               for k, v in given.items() if defaults.get(k) != v]
    return " ".join(["python -m envs.collect --env-id", shlex.quote(env_id), *options,
                     "--dataset-dir", shlex.quote(str(dataset_dir)), "--force"])


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (a 100 MB agent file takes a fraction of a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_fingerprint(folder) -> dict:
    """{"agent_<i>.npz": sha256} of a dataset folder's agent files: what `meta["content_sha256"]` holds."""
    files = sorted(Path(folder).glob("agent_*.npz"), key=lambda f: int(re.sub(r"\D", "", f.stem) or 0))
    return {f.name: file_sha256(f) for f in files}


TEMPORARY = re.compile(r"\.(tmp|old)-(\d+)")  # <name>.tmp-<pid> (a build) and <name>.old-<pid> (a folder being replaced)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):  # no process can have this id
        return False
    return True


def _remove_stale_builds(path: Path) -> None:
    """Temporary folders of builds of this dataset whose process is gone (killed mid-build)."""
    if not path.parent.is_dir():
        return
    for tmp in path.parent.iterdir():
        if not tmp.name.startswith(f"{path.name}."):
            continue
        match = TEMPORARY.fullmatch(tmp.name[len(path.name):])
        if match is not None and not _alive(int(match.group(2))):
            shutil.rmtree(tmp, ignore_errors=True)


def _check_dataset_dir(dataset_dir: str) -> list[Path]:
    """Refuse a dataset dir that is a file or cannot be made or written, before anything is written.
    Returns the folders that are still to be made (outermost first)."""
    root = Path(dataset_dir)
    fix = "pass a folder you can write to with --dataset-dir (or set ODMARL_DATASET_DIR)"
    missing, existing = [], root
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            raise InputError(f"--dataset-dir {dataset_dir}: {existing} is a broken link; {fix}")
        missing.append(existing)
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == root else f"cannot be created: {existing} is a file"
        raise InputError(f"--dataset-dir {dataset_dir} {what}; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "is not writable" if existing == root else f"cannot be created: {existing} is not writable"
        raise InputError(f"--dataset-dir {dataset_dir} {verb}; {fix}")
    return missing[::-1]


def _make_dirs(dataset_dir: str, missing: list[Path]) -> None:
    fix = "pass a folder you can write to with --dataset-dir (or set ODMARL_DATASET_DIR)"
    try:
        Path(dataset_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(missing)
        raise InputError(f"--dataset-dir {dataset_dir} cannot be created ({e.strerror}); {fix}") from None


def _remove_empty(made: list[Path]) -> None:
    """Undo the folders a refused build made, innermost first, if they stayed empty."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            return


def _versions(module) -> dict:
    out = {"python": platform.python_version()}
    for package in ("numpy", *getattr(module, "PINNED_PACKAGES", ())):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def _fingerprint(module, recipe: dict) -> str | None:
    """A hash of what a recipe reads besides its options (e.g. behaviour policy weights), or None."""
    return module.fingerprint(recipe) if hasattr(module, "fingerprint") else None


def build(env_id: "str | envs.EnvSpec", env_kwargs: dict | None = None, recipe: dict | None = None, dataset_dir: str | None = None,
          replace: bool = False) -> Path:
    """Collect every agent's dataset (each from its own episodes) and write the folder atomically; an existing
    folder is kept unless `replace` (`python -m envs.collect --force`).

    Every check that can refuse the input runs before anything is written: option ranges, the env, the recipe's
    inputs (the entry's `preflight`), the dataset dir, a foreign folder under the dataset's name."""
    spec = env_id if isinstance(env_id, envs.EnvSpec) else envs.EnvSpec(env_id, env_kwargs, recipe)
    env_id, env_kwargs, recipe, module = spec.env_id, spec.env_kwargs, spec.recipe, spec.module
    env = spec.make()
    if hasattr(module, "preflight"):
        try:
            module.preflight(env, recipe)
        except ValueError as e:
            raise InputError(str(e)) from None
    dataset_dir = str(dataset_dir or default_dataset_dir())
    missing = _check_dataset_dir(dataset_dir)
    path = dataset_path(dataset_dir, env_id, env_kwargs, recipe)
    command = rebuild_command(env_id, env_kwargs, recipe, dataset_dir, module)
    if not replace and path.is_symlink() and not path.exists():
        raise InputError(f"{path} is a broken link; remove it, or replace it with `{command}`")
    if path.exists() and not replace:
        if (path / "meta.json").exists():
            return path  # built already (`load` checks it)
        what = "is a file" if not path.is_dir() else "exists without meta.json (not a build of this code)"
        raise InputError(f"{path} {what}; replace it with `{command}`")
    _make_dirs(dataset_dir, missing)
    _remove_stale_builds(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    start = time.time()
    sizes, summaries = [], []
    done = False
    try:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)  # parents: a minari:<id> dataset nests in folders named by the id
        except OSError as e:
            raise InputError(f"cannot write to {path.parent} ({e.strerror}); pass a folder you can write to with --dataset-dir") from None
        for agent_id in range(env.n_agents):
            with tqdm(desc=f"{env_id} agent {agent_id}", unit=" transitions", unit_scale=True) as progress:
                try:
                    data = module.collect(env, agent_id, progress=progress, **recipe)
                except ValueError as e:  # a recipe option out of range
                    raise InputError(str(e)) from None
            validate(data, env, agent_id, f"{env_id} agent {agent_id} (freshly built)",
                     fix="the recipe wrote bad data: a bug, please report it")
            try:
                np.savez(tmp / f"agent_{agent_id}.npz", **data)
            except OSError as e:
                raise InputError(f"cannot write {tmp / f'agent_{agent_id}.npz'} ({e.strerror}); free space or pass "
                                 "another --dataset-dir") from None
            sizes.append(len(data["rewards"]))
            if hasattr(module, "dataset_summary"):  # what users judge a dataset by (returns, win rate, ...)
                summaries.append(module.dataset_summary(data))
            del data
        meta = dict(
            format_version=FORMAT_VERSION,
            env_id=env_id,
            env_kwargs=env_kwargs,
            recipe=recipe,
            n_agents=env.n_agents,
            obs_dims=env.obs_dims,
            act_dims=env.act_dims,
            discrete=env.discrete,
            n_transitions=sizes,
            build_seconds=round(time.time() - start, 2),
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
            versions=_versions(module),
            fingerprint=_fingerprint(module, recipe),
            summary=summaries or None,
            content_sha256=content_fingerprint(tmp),
        )
        try:
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        except OSError as e:
            raise InputError(f"cannot write {tmp / 'meta.json'} ({e.strerror}); free space or pass another --dataset-dir") from None
        _publish(tmp, path, replace, command)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_empty(missing)
    return path


def _publish(tmp: Path, path: Path, replace: bool, command: str) -> None:
    """Rename the finished `tmp` to `path` in one step. With `replace`, the old folder is first renamed aside,
    so a reader sees the old folder or the new one, never a mix; without, a folder another builder published
    meanwhile (a grid starting two runs of one recipe: same seed, same data) is kept."""
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    if replace and (path.exists() or path.is_symlink()):
        if path.is_dir() and not path.is_symlink():
            os.replace(path, old)
        else:
            path.unlink()
    try:
        os.replace(tmp, path)
    except OSError:
        if not (path / "meta.json").exists():
            raise InputError(f"{path} appeared meanwhile without meta.json (not a build of this code); "
                             f"replace it with `{command}`") from None
    finally:
        shutil.rmtree(old, ignore_errors=True)


def validate(data: dict, env, agent_id: int, name: str, fix: str = "rebuild the dataset with `python -m envs.collect` "
             "(its options and --force)") -> None:
    """Shapes, dtypes, finiteness and value ranges of one agent's arrays; one-line error on the first problem."""
    required = ["obs", "actions", "rewards", "next_obs", "dones", "timeouts"]
    if env.discrete:
        required += ["avail_actions", "next_avail_actions"]
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{name} lacks arrays {missing}; {fix}")
    n = len(data["rewards"])
    obs_dim = env.obs_dims[agent_id]
    expected = {
        "obs": ((n, obs_dim), np.float32),
        "next_obs": ((n, obs_dim), np.float32),
        "rewards": ((n,), np.float32),
        "dones": ((n,), np.bool_),
        "timeouts": ((n,), np.bool_),
    }
    if env.discrete:
        n_actions = env.act_dims[agent_id]
        expected["actions"] = ((n,), np.int64)
        expected["avail_actions"] = ((n, n_actions), np.bool_)
        expected["next_avail_actions"] = ((n, n_actions), np.bool_)
    else:
        expected["actions"] = ((n, env.act_dims[agent_id]), np.float32)
    if "states" in data:
        expected["states"] = ((n, env.state_dim), np.float32)
    for key, (shape, dtype) in expected.items():
        array = data[key]
        if array.shape != shape or array.dtype != dtype:
            raise InputError(f"{name}: `{key}` is {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}; {fix}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(f"{name}: `{key}` holds NaN or inf; {fix}")
    if n == 0:
        raise InputError(f"{name} holds no transitions; {fix}")
    if (data["dones"] & data["timeouts"]).any():
        raise InputError(f"{name}: a transition is both terminal and a time limit; {fix}")
    if not env.discrete:
        low, high = getattr(env, "act_low", -1.0), getattr(env, "act_high", 1.0)
        a = data["actions"]
        if a.min() < low - 1e-6 or a.max() > high + 1e-6:
            raise InputError(f"{name}: actions outside the action range [{low:g}, {high:g}] "
                             f"(min {a.min():.3g}, max {a.max():.3g}); {fix}")
    else:
        a = data["actions"]
        if a.min() < 0 or a.max() >= env.act_dims[agent_id]:
            raise InputError(f"{name}: actions outside [0, {env.act_dims[agent_id]}); {fix}")
        if not data["avail_actions"][np.arange(n), a].all():
            raise InputError(f"{name}: an action in the data is not available under its mask; {fix}")
        for key in ("avail_actions", "next_avail_actions"):
            if not data[key].any(1).all():
                raise InputError(f"{name}: a row of `{key}` allows no action at all; {fix}")


def _check_meta(spec: "envs.EnvSpec", env, path: Path, fix: str) -> dict:
    """meta.json of a dataset folder, checked against the requested env and recipe, this machine and this code."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path / 'meta.json'} is unreadable ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path / 'meta.json'} is not a dataset's metadata; {fix}")
    version = meta.get("format_version")
    if version == 1:  # written before content hashes: the same arrays, so upgraded in place, once
        meta = _upgrade_format_1(path, meta, env, fix)
        version = meta["format_version"]
    if version != FORMAT_VERSION:
        why = ("older code wrote it, without the content hashes this code checks" if isinstance(version, int) and version < FORMAT_VERSION
               else "this code does not know that format")
        raise InputError(f"{path} has format {version}, this code reads {FORMAT_VERSION} ({why}); {fix}")
    env_id, recipe, module = spec.env_id, spec.recipe, spec.module
    for key, want in (("env_id", env_id), ("env_kwargs", spec.env_kwargs), ("recipe", recipe)):
        if meta.get(key) != want:
            raise InputError(f"{path} was built for {key}={meta.get(key)}, not the requested {want}; {fix}")
    if meta.get("n_agents") != env.n_agents:
        raise InputError(f"{path} holds {meta.get('n_agents')} agents, {env_id} has {env.n_agents}; {fix}")
    versions, built = _versions(module), meta.get("versions") or {}
    for package in getattr(module, "PINNED_PACKAGES", ()):
        if built.get(package) != versions[package]:
            raise InputError(
                f"{path} was built with {package} {built.get(package)}, this machine has {versions[package]} "
                f"(simulations differ between releases); {fix}"
            )
    current = _fingerprint(module, recipe)
    if current is not None and meta.get("fingerprint") != current:
        raise InputError(f"{path} was built from other behaviour policies than the ones now on disk; {fix}")
    hashes = meta.get("content_sha256")
    names = [f"agent_{i}.npz" for i in range(env.n_agents)]
    if not isinstance(hashes, dict) or any(not isinstance(hashes.get(n), str) for n in names):
        raise InputError(f"{path / 'meta.json'} lacks the content SHA-256 of {', '.join(names)}; {fix}")
    return meta


def _upgrade_format_1(path: Path, meta: dict, env, fix: str) -> dict:
    """A format-1 dataset holds the same arrays as format 2 but no (or only some) content hashes. Hash every
    agent file, and record the hashes and format 2 in meta.json (atomically), so a user keeps datasets that
    took hours to build; from then on a changed file is refused like in any format-2 dataset. The arrays are
    still validated on every load. A folder that is not writable is upgraded in memory only."""
    names = [f"agent_{i}.npz" for i in range(env.n_agents)]
    absent = [n for n in names if not (path / n).is_file()]
    if absent:
        raise InputError(f"{path} lacks {', '.join(absent)}; {fix}")
    print(f"{path}: format 1, recording the SHA-256 of its agent files (once)")
    meta = {**meta, "format_version": FORMAT_VERSION, "content_sha256": {n: file_sha256(path / n) for n in names}}
    tmp = path / f"meta.json.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path / "meta.json")
    except OSError:
        tmp.unlink(missing_ok=True)
    return meta


def _read_agent(path: Path, meta: dict, env, agent_id: int, fix: str) -> dict:
    """One agent's arrays, after checking the file's SHA-256 against meta.json, validated."""
    file = path / f"agent_{agent_id}.npz"
    try:
        if file_sha256(file) != meta["content_sha256"][file.name]:
            raise InputError(f"{file} is not the file that was built (its SHA-256 differs from meta.json's: "
                             f"truncated, edited or replaced); {fix}")
        with np.load(file, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except InputError:
        raise
    except Exception as e:  # a missing or foreign file: numpy and zipfile raise many kinds
        raise InputError(f"cannot read {file} ({type(e).__name__}: {e}); {fix}") from None
    validate(data, env, agent_id, str(file), fix)
    return data


def _open(spec: "envs.EnvSpec", dataset_dir, build_if_missing):
    env_id, env_kwargs, recipe = spec.env_id, spec.env_kwargs, spec.recipe
    env = spec.make()
    dataset_dir = str(dataset_dir or default_dataset_dir())
    path = dataset_path(dataset_dir, env_id, env_kwargs, recipe)
    command = rebuild_command(env_id, env_kwargs, recipe, dataset_dir, spec.module)
    fix = f"rebuild it with `{command}`"
    if not (path / "meta.json").exists():
        if path.exists() or path.is_symlink():
            what = "is not a folder" if not path.is_dir() else "exists but holds no meta.json (not a whole build of this code)"
            raise InputError(f"{path} {what}; {fix}")
        if not build_if_missing:
            raise InputError(f"no dataset at {path}; build it with `{command.removesuffix(' --force')}`")
        print(f"building the {env_id} dataset at {path} (once)")
        build(spec, dataset_dir=dataset_dir)
    return env, path, fix, _check_meta(spec, env, path, fix)


def _agent_ids(env_id, env, agent_ids):
    agent_ids = list(range(env.n_agents)) if agent_ids is None else list(agent_ids)
    for agent_id in agent_ids:
        if isinstance(agent_id, bool) or not isinstance(agent_id, (int, np.integer)) or not 0 <= agent_id < env.n_agents:
            raise InputError(f"agent id {agent_id!r} out of range: {env_id} has agents 0..{env.n_agents - 1}")
    return agent_ids


def load(
    env_id: str,
    env_kwargs: dict | None = None,
    recipe: dict | None = None,
    dataset_dir: str | None = None,
    agent_ids: list[int] | None = None,
    build_if_missing: bool = True,
):
    """(env, {agent_id: arrays}, meta) for the requested env and recipe; builds the dataset if absent. `meta` is the
    folder's meta.json plus its `path`.

    Only the listed agents' files are opened (and hashed), so one agent can train on its own file alone.
    """
    env, path, fix, meta = _open(envs.EnvSpec(env_id, env_kwargs, recipe), dataset_dir, build_if_missing)
    data = {agent_id: _read_agent(path, meta, env, agent_id, fix) for agent_id in _agent_ids(env_id, env, agent_ids)}
    return env, data, {**meta, "path": str(path)}


def verify(env_id: str, env_kwargs: dict | None = None, recipe: dict | None = None, dataset_dir: str | None = None) -> dict:
    """Check an existing dataset whole, every agent's file, one at a time (memory of one file); its meta."""
    env, path, fix, meta = _open(envs.EnvSpec(env_id, env_kwargs, recipe), dataset_dir, build_if_missing=False)
    for agent_id in range(env.n_agents):
        _read_agent(path, meta, env, agent_id, fix)
    return meta


# Per-agent sampling: every agent draws from its own random stream, seeded by (seed, agent id), so what agent i
# draws never depends on which other agents train in the same process (the batched ensemble is N learners).
RNG_CHUNK = 1000  # minibatch indices are drawn for this many steps at once: per-step draws cost more


def agent_generators(seed: int, agent_ids: list[int], device) -> list:
    """One torch random stream per agent, seeded by (seed, agent id)."""
    import torch

    return [torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            for i in agent_ids]


def randn(generators, *shape, device):  # [n_agents, *shape], agent i's from its own stream
    import torch

    return torch.stack([torch.randn(*shape, generator=g, device=device) for g in generators])


def sample_indices(sizes, shape, generators):  # [n_agents, *shape], agent i's from [0, sizes[i])
    import torch

    return torch.stack([torch.randint(int(s), shape, generator=g, device=g.device) for s, g in zip(sizes, generators)])


def gather(array, idx):  # array [n_agents, T, *], idx [n_agents, batch] -> [n_agents, batch, *]
    import torch

    return array[torch.arange(array.shape[0], device=array.device)[:, None], idx]


def stack_agents(agent_data: list[dict], keys, device, normalize_obs: bool | None = None, n_actions: int | None = None) -> dict:
    """The agents' arrays stacked along a leading agent dimension, [n_agents, T, *], each padded to the longest dataset
    by repeating its last row; `size` holds each agent's own length, and an agent samples only its own first `size`
    rows. Action masks of agents with fewer actions are padded to `n_actions` with unavailable actions.
    With `normalize_obs` not None, `obs` and `next_obs` are normalised by each agent's own mean and std (+ 1e-3)
    when True, by 0 and 1 when False, and `obs_mean`, `obs_std` [n_agents, 1, obs_dim] are kept for evaluation."""
    import torch

    if len({d["obs"].shape[1] for d in agent_data}) > 1 or (n_actions is None and len({d["actions"].shape[1] for d in agent_data}) > 1):
        raise InputError("the batched ensemble needs equal observation and action sizes across agents")
    size = max(len(d["rewards"]) for d in agent_data)
    out = {"size": [len(d["rewards"]) for d in agent_data]}
    for key in keys:
        arrays = [d[key] for d in agent_data]
        if key.endswith("avail_actions") and len({a.shape[1] for a in arrays}) > 1:
            arrays = [np.pad(a, [(0, 0), (0, n_actions - a.shape[1])]) for a in arrays]  # padded actions never available
        padded = [np.concatenate([a, np.repeat(a[-1:], size - len(a), 0)]) for a in arrays]
        out[key] = torch.as_tensor(np.stack(padded), device=device)
    if normalize_obs is not None:
        obs_stats = [(d["obs"].mean(0), d["obs"].std(0) + 1e-3) for d in agent_data]
        if not normalize_obs:
            obs_stats = [(np.zeros_like(m), np.ones_like(s)) for m, s in obs_stats]
        out["obs_mean"] = torch.as_tensor(np.stack([m for m, _ in obs_stats])[:, None], device=device)  # [n, 1, obs_dim]
        out["obs_std"] = torch.as_tensor(np.stack([s for _, s in obs_stats])[:, None], device=device)
        out["obs"] = (out["obs"] - out["obs_mean"]) / out["obs_std"]
        out["next_obs"] = (out["next_obs"] - out["obs_mean"]) / out["obs_std"]
    return out


def analysis_states(env, agent_data: dict, agent_ids: list[int], n: int, seed: int, device):
    """`n` states drawn from the union of the agents' datasets, seen through each agent's eyes: [n_agents, n, obs_dim],
    where the value difference among agents is measured (the paper's Table 6)."""
    import torch

    union = np.concatenate([agent_data[i]["states"] for i in agent_ids])
    union = union[np.random.default_rng(seed).choice(len(union), min(n, len(union)), replace=False)]
    return torch.as_tensor(np.stack([env.observe(union)[i] for i in agent_ids]), device=device)


class Sampler:
    """Each agent's minibatch of its own rows, from its own stream: indices drawn RNG_CHUNK steps at a time (and, with
    `noise_shape`, as much standard normal noise per step, e.g. TD3's target smoothing). `sample(step)` gives the
    batch of that step (steps count from 1) as {key: [n_agents, batch_size, *]} (plus `noise`). Its state (the
    streams and the current chunk) goes into the run's checkpoint, so a resumed run draws what the whole one would."""

    def __init__(self, data: dict, keys, batch_size: int, generators, noise_shape: tuple | None = None):
        self.data, self.keys, self.batch_size, self.generators = data, tuple(keys), batch_size, generators
        self.noise_shape, self.chunk = noise_shape, None

    def sample(self, step: int) -> dict:
        device = self.data[self.keys[0]].device
        if (step - 1) % RNG_CHUNK == 0:
            self.chunk = dict(idx=sample_indices(self.data["size"], (RNG_CHUNK, self.batch_size), self.generators))
            if self.noise_shape is not None:
                self.chunk["noise"] = randn(self.generators, RNG_CHUNK, self.batch_size, *self.noise_shape, device=device)
        idx = self.chunk["idx"][:, (step - 1) % RNG_CHUNK]
        batch = {k: gather(self.data[k], idx) for k in self.keys}
        if self.noise_shape is not None:
            batch["noise"] = self.chunk["noise"][:, (step - 1) % RNG_CHUNK]
        return batch

    def state_dict(self) -> dict:
        return dict(generators=[g.get_state() for g in self.generators],
                    chunk={k: v.cpu() for k, v in self.chunk.items()} if self.chunk else None)

    def load_state_dict(self, state: dict) -> None:
        for g, g_state in zip(self.generators, state["generators"]):
            g.set_state(g_state)
        device = self.data[self.keys[0]].device
        self.chunk = {k: v.to(device) for k, v in state["chunk"].items()} if state["chunk"] else None
