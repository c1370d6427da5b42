"""Per-agent offline datasets: one `agent_<i>.npz` per agent plus `meta.json`.

Agent i's file holds only its own transitions (o_i, a_i, r, o'_i, done, timeout) and,
for analysis only, the global `states` they were observed from. `done` marks a true
terminal state; a time-limit end is `timeout` and bootstraps like any other step.
A dataset folder is written under a temporary name and renamed when complete, so a
folder that exists is whole. Loading checks it against the requested env and recipe.
"""

import hashlib
import json
import os
import re
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

import envs
from envs import InputError

FORMAT_VERSION = 1
DATASET_DIR_ENV = "ODMARL_DATASET_DIR"


def default_dataset_dir() -> str:
    return os.environ.get(DATASET_DIR_ENV, "datasets")


def dataset_path(dataset_dir: str, env_id: str, env_kwargs: dict, recipe: dict) -> Path:
    """`<dataset_dir>/<env_id>-<hash of env kwargs and recipe>`: another recipe, another folder."""
    key = json.dumps({"env_id": env_id, "env_kwargs": env_kwargs, "recipe": recipe}, sort_keys=True)
    return Path(dataset_dir) / f"{env_id}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def rebuild_command(env_id: str, env_kwargs: dict, recipe: dict, dataset_dir: str) -> str:
    """The `python -m envs.collect` line that rebuilds exactly this dataset (options that differ from the defaults)."""
    module = envs.env_module(env_id)
    options = [f"--{k.replace('_', '-')} {v}" for defaults, given in ((module.ENV_DEFAULTS, env_kwargs), (module.RECIPE_DEFAULTS, recipe))
               for k, v in given.items() if defaults.get(k) != v]
    return " ".join(["python -m envs.collect --env-id", env_id, *options, "--dataset-dir", str(dataset_dir), "--force"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_stale_builds(path: Path) -> None:
    """Temporary folders of builds of this dataset whose process is gone (killed mid-build)."""
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        match = re.fullmatch(rf"{re.escape(path.name)}\.tmp-(\d+)", tmp.name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # another user's live build
            pass


def _writable_dir(dataset_dir: str) -> Path:
    root = Path(dataset_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"--dataset-dir {dataset_dir} is a file, not a folder; pass a folder (or set ODMARL_DATASET_DIR)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--dataset-dir {dataset_dir} cannot be created ({e.strerror}); pass a folder you can write to") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise InputError(f"--dataset-dir {dataset_dir} is not writable; pass a folder you can write to (or set ODMARL_DATASET_DIR)")
    return root


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


def build(env_id: str, env_kwargs: dict | None = None, recipe: dict | None = None, dataset_dir: str | None = None,
          replace: bool = False) -> Path:
    """Collect every agent's dataset (each from its own episodes) and write the folder atomically; an existing
    folder is kept unless `replace` (`python -m envs.collect --force`)."""
    env_kwargs, recipe = envs.resolve(env_id, env_kwargs, recipe)
    module = envs.env_module(env_id)
    env = envs.make(env_id, **env_kwargs)
    dataset_dir = dataset_dir or default_dataset_dir()
    _writable_dir(dataset_dir)
    path = dataset_path(dataset_dir, env_id, env_kwargs, recipe)
    _remove_stale_builds(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.time()
    sizes, summaries, hashes = [], [], {}
    try:
        for agent_id in range(env.n_agents):
            with tqdm(desc=f"{env_id} agent {agent_id}", unit=" transitions", unit_scale=True) as progress:
                try:
                    data = module.collect(env, agent_id, progress=progress, **recipe)
                except ValueError as e:  # a recipe option out of range
                    raise InputError(str(e)) from None
            validate(data, env, agent_id, f"{env_id} agent {agent_id} (freshly built)")
            np.savez(tmp / f"agent_{agent_id}.npz", **data)
            hashes[f"agent_{agent_id}.npz"] = file_sha256(tmp / f"agent_{agent_id}.npz")
            sizes.append(len(data["rewards"]))
            if hasattr(module, "dataset_summary"):  # what users judge a dataset by (returns, win rate, ...)
                summaries.append(module.dataset_summary(data))
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
            content_sha256=hashes,
        )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if path.exists() and replace:
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:  # another process built the same recipe meanwhile (a grid starting two runs): same seed, same data
            if not (path / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def validate(data: dict, env, agent_id: int, name: str) -> None:
    """Shapes, dtypes and finiteness of one agent's arrays; one-line error on the first problem."""
    required = ["obs", "actions", "rewards", "next_obs", "dones", "timeouts"]
    if env.discrete:
        required += ["avail_actions", "next_avail_actions"]
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{name} lacks arrays {missing}; rebuild it (`python -m envs.collect ... --force`)")
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
            raise InputError(
                f"{name}: `{key}` is {array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{list(shape)}; "
                "rebuild it (`python -m envs.collect ... --force`)"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(f"{name}: `{key}` holds NaN or inf; rebuild it (`python -m envs.collect ... --force`)")
    if (data["dones"] & data["timeouts"]).any():
        raise InputError(f"{name}: a transition is both terminal and a time limit; rebuild it (`python -m envs.collect ... --force`)")
    if not env.discrete and np.abs(data["actions"]).max(initial=0) > 1 + 1e-6:
        raise InputError(f"{name}: actions outside the action range [-1, 1]; rebuild it (`python -m envs.collect ... --force`)")
    if env.discrete:
        a = data["actions"]
        if a.min() < 0 or a.max() >= env.act_dims[agent_id]:
            raise InputError(f"{name}: actions outside [0, {env.act_dims[agent_id]}); rebuild it")
        if not data["avail_actions"][np.arange(n), a].all():
            raise InputError(f"{name}: an action in the data is not available under its mask; rebuild it")
        for key in ("avail_actions", "next_avail_actions"):
            if not data[key].any(1).all():
                raise InputError(f"{name}: a row of `{key}` allows no action at all; rebuild it")


def load(
    env_id: str,
    env_kwargs: dict | None = None,
    recipe: dict | None = None,
    dataset_dir: str | None = None,
    agent_ids: list[int] | None = None,
    build_if_missing: bool = True,
):
    """(env, {agent_id: arrays}, meta) for the requested env and recipe; builds the dataset if absent.

    Only the listed agents' files are opened, so one agent can train on its own file alone.
    """
    env_kwargs, recipe = envs.resolve(env_id, env_kwargs, recipe)
    env = envs.make(env_id, **env_kwargs)
    dataset_dir = dataset_dir or default_dataset_dir()
    path = dataset_path(dataset_dir, env_id, env_kwargs, recipe)
    command = rebuild_command(env_id, env_kwargs, recipe, dataset_dir)
    fix = f"rebuild it with `{command}`"
    if not (path / "meta.json").exists():
        if not build_if_missing:
            raise InputError(f"no dataset at {path}; build it with `{command.removesuffix(' --force')}`")
        print(f"building the {env_id} dataset at {path} (once)")
        build(env_id, env_kwargs, recipe, dataset_dir)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path / 'meta.json'} is unreadable ({e}); {fix}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path} has format {meta.get('format_version')}, this code reads {FORMAT_VERSION}; {fix}")
    for key, want in (("env_id", env_id), ("env_kwargs", env_kwargs), ("recipe", recipe)):
        if meta.get(key) != want:
            raise InputError(f"{path} was built for {key}={meta.get(key)}, not the requested {want}; {fix}")
    module = envs.env_module(env_id)
    versions = _versions(module)
    for package in getattr(module, "PINNED_PACKAGES", ()):
        if meta["versions"].get(package) != versions[package]:
            raise InputError(
                f"{path} was built with {package} {meta['versions'].get(package)}, this machine has {versions[package]} "
                f"(simulations differ between releases); {fix}"
            )
    current = _fingerprint(module, recipe)
    if current is not None and meta.get("fingerprint") != current:
        raise InputError(f"{path} was built from other behaviour policies than the ones now on disk; {fix}")
    agent_ids = list(range(env.n_agents)) if agent_ids is None else agent_ids
    data = {}
    for agent_id in agent_ids:
        if not 0 <= agent_id < env.n_agents:
            raise InputError(f"agent id {agent_id} out of range: {env_id} has agents 0..{env.n_agents - 1}")
        file = path / f"agent_{agent_id}.npz"
        want = (meta.get("content_sha256") or {}).get(file.name)
        try:
            if want is not None and file_sha256(file) != want:
                raise InputError(f"{file} is not the file that was built (its SHA-256 differs from meta.json's); {fix}")
            with np.load(file) as npz:
                data[agent_id] = {k: npz[k] for k in npz.files}
        except InputError:
            raise
        except Exception as e:  # a missing, truncated or foreign file: numpy and zipfile raise many kinds
            raise InputError(f"cannot read {file} ({type(e).__name__}: {e}); {fix}") from None
        validate(data[agent_id], env, agent_id, str(file))
        if want is None:  # built before content hashes: validated now, stamped once
            meta.setdefault("content_sha256", {})[file.name] = file_sha256(file)
            tmp = path / f"meta.json.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, path / "meta.json")
    return env, data, meta
