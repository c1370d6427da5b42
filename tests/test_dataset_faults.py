"""Every fault of the contract issue ends in one line that names the problem and the fix, before anything is
written, and leaves nothing half-written behind; and envs/ has no import circles."""

import ast
import errno
import json
import os
import shlex
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest

import conftest
import envs
from conftest import ROOT, one_line_error
from envs import InputError, dataset

TINY = {"n_transitions": 2000}


def collect(tmp_path, *flags, dataset_dir=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "envs.collect", "--dataset-dir", str(dataset_dir or tmp_path / "data"), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def run_command(command: str):
    """Run a `python -m envs.collect ...` line an error message gave, as a user would paste it."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "envs.collect"], command
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def quoted_command(message: str) -> str:
    return str(message).split("`")[1]


def arrays(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(path, data):
    """Write an agent file and stamp its new hash in meta.json, so that only the array checks can object."""
    np.savez(path, **data)
    meta = json.loads((path.parent / "meta.json").read_text())
    meta["content_sha256"][path.name] = dataset.file_sha256(path)
    (path.parent / "meta.json").write_text(json.dumps(meta))


def leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- 1. option ranges, per env, before any folder is made ----

@pytest.mark.parametrize("flags, message", [
    (["--n-transitions", "0"], "dg: --n-transitions must be > 0, got 0"),
    (["--n-transitions", "-5"], "dg: --n-transitions must be > 0, got -5"),
    (["--episode-len", "0"], "dg: --episode-len must be > 0"),
    (["--seed", "-1"], "dg: --seed must be an integer >= 0"),
    (["--eval-episode-len", "0"], "dg: --eval-episode-len must be > 0"),
    (["--start-low", "nan"], "dg: --start-low must be a finite number"),
    (["--start-low", "0.5", "--start-high", "0.5"], "dg: start_low (0.5) must be below start_high (0.5)"),
    (["--obs", "half"], "dg: --obs must be 'full' or 'partial'"),
    (["--noise-std", "0.1"], "dg does not take --noise-std"),
])
def test_collect_refuses_options_out_of_range_before_writing(tmp_path, flags, message):
    assert message in one_line_error(collect(tmp_path, "--env-id", "dg", *flags))
    assert not (tmp_path / "data").exists()


def test_matrix_game_options_are_refused_before_writing(tmp_path):
    assert "matrix-game: --n-episodes must be > 0, got 0" in one_line_error(collect(tmp_path, "--env-id", "matrix-game", "--n-episodes", "0"))
    assert "--payoff must be rows of numbers" in one_line_error(collect(tmp_path, "--env-id", "matrix-game", "--payoff", "1,x;6,1"))
    assert not (tmp_path / "data").exists()


def every_option_table():
    """Each env id's options with their defaults (the adapters' constants: no learner imported)."""
    from envs import cn, dg, mamujoco, matrix_game, minari_split, smax

    tables = {"dg": dg, "matrix-game": matrix_game, "cn": cn, "minari:mujoco/hopper/medium-v0": minari_split}
    tables.update({env_id: mamujoco for env_id in mamujoco.TASKS})
    tables.update({env_id: smax for env_id in smax.MAPS})
    return {env_id: {**m.ENV_DEFAULTS, **m.RECIPE_DEFAULTS} for env_id, m in tables.items()}


BAD = {
    envs.POSITIVE_INT: [0, -3, 2.5, True, "7", float("inf")],
    envs.NON_NEGATIVE_INT: [-1, 0.5, "0"],
    envs.NON_NEGATIVE: [-0.1, float("nan"), "0.1"],
    envs.UNIT: [-0.1, 1.5, float("nan")],
    envs.FINITE: [float("nan"), float("inf"), "1"],
    envs.TEXT: [3, 1.5],
    tuple(envs.CHOICES): ["float16", 3],
}


def test_every_option_of_every_env_has_a_checked_range():
    """A new option must say what range it takes (envs/__init__.py), or it would go unchecked."""
    known = set().union(*BAD)
    for env_id, options in every_option_table().items():
        assert set(options) <= known, (env_id, set(options) - known)
        for name, default in options.items():
            envs.check_ranges(env_id, {name: default})  # the defaults are in range


@pytest.mark.parametrize("names, values", list(BAD.items()))
def test_check_ranges_refuses_each_bad_kind(names, values):
    for name in names:
        for value in values:
            with pytest.raises(InputError, match=f"--{name.replace('_', '-')} must"):
                envs.check_ranges("x", {name: value})


@pytest.mark.parametrize("env_id", ["dg", "matrix-game"])
def test_resolve_refuses_every_recipe_option_out_of_range(env_id):
    module = envs.env_module(env_id)
    for name in module.RECIPE_DEFAULTS:
        bad = next(values[0] for names, values in BAD.items() if name in names)
        with pytest.raises(InputError, match=f"{env_id}: --{name.replace('_', '-')} must"):
            envs.resolve(env_id, {}, {name: bad})


def test_collect_cli_takes_every_option_of_every_env():
    """The rebuild commands the errors give name every option that differs from the defaults: collect must take them."""
    from envs import collect as cli

    flags = {f.name for f in fields(cli.Args)}
    for env_id, options in every_option_table().items():
        assert set(options) <= flags, (env_id, set(options) - flags)


def test_scripts_refuse_an_empty_dataset_before_writing(tmp_path):
    proc = conftest.run_script("matd3bc.py", tmp_path, "--n-transitions", "0", check=False)
    assert "dg: --n-transitions must be > 0, got 0" in one_line_error(proc)
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "runs").exists()


def test_recipe_inputs_are_checked_before_writing(tmp_path):
    """Missing behaviour policies are refused before any folder is made (the recipe's preflight)."""
    proc = collect(tmp_path, "--env-id", "hopper-3x1", "--n-transitions", "100", "--behavior-dir", str(tmp_path / "none"))
    assert "train them with `python -m envs.behavior.sac --env-id hopper-3x1`" in one_line_error(proc)
    assert not (tmp_path / "data").exists()


# ---- 2. dataset dirs that are files, cannot be made, or cannot be written ----

def test_dataset_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in one_line_error(collect(tmp_path, "--env-id", "dg", dataset_dir=tmp_path / "file"))
    proc = collect(tmp_path, "--env-id", "dg", dataset_dir=tmp_path / "file" / "sub")
    assert "cannot be created: " in one_line_error(proc) and "is a file" in one_line_error(proc)
    assert leftovers(tmp_path) == ["file"]


def test_dataset_dir_that_is_not_writable(tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "data"
    else:  # root writes anywhere but on file systems that refuse everyone
        target = "/proc/odmarl-test/data"
    try:
        proc = collect(tmp_path, "--env-id", "dg", "--n-transitions", "100", dataset_dir=target)
        message = one_line_error(proc)
        assert "--dataset-dir" in message and ("not writable" in message or "cannot be created" in message), message
        assert "pass a folder you can write to" in message
    finally:
        if os.geteuid() != 0:
            locked.chmod(0o700)


def test_a_write_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    real = np.savez
    calls = []

    def savez(file, **data):
        calls.append(file)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, **data)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(InputError, match="No space left on device.*free space or pass another --dataset-dir"):
        dataset.build("dg", {}, TINY, str(tmp_path / "a" / "b"))
    assert leftovers(tmp_path) == []  # neither the half-written folder nor the folders made for it


# ---- 3/4. damaged datasets: refused on load, not called "existing" by collect, with a command that works ----

def test_a_truncated_file_is_refused_with_a_command_that_rebuilds_it(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path / "data"))
    file = path / "agent_0.npz"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(InputError, match="rebuild it with `python -m envs.collect --env-id dg --n-transitions 2000") as error:
        dataset.load("dg", {}, TINY, str(tmp_path / "data"))
    assert "agent_0.npz is not the file that was built" in str(error.value.code)
    # collect no longer says "exists" about it: it says it is damaged and how to fix it
    message = one_line_error(collect(tmp_path, "--env-id", "dg", "--n-transitions", "2000"))
    assert "exists but is damaged" in message and "agent_0.npz" in message and "--force`" in message
    # and the command it gives works
    proc = run_command(quoted_command(error.value.code))
    assert proc.returncode == 0, proc.stderr
    dataset.load("dg", {}, TINY, str(tmp_path / "data"))
    proc = collect(tmp_path, "--env-id", "dg", "--n-transitions", "2000")
    assert proc.returncode == 0 and "exists and is whole" in proc.stdout and proc.stdout.strip().splitlines()[-1] == str(path)


def test_a_missing_agent_file_is_damage_too(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path / "data"))
    (path / "agent_1.npz").unlink()
    message = one_line_error(collect(tmp_path, "--env-id", "dg", "--n-transitions", "2000"))
    assert "cannot read" in message and "agent_1.npz" in message and "--force`" in message


def test_rebuild_commands_quote_their_options_and_work(tmp_path):
    """Options with `;` or spaces survive the shell: the command an error gives rebuilds exactly that dataset."""
    kwargs, recipe = {"payoff": "2,5;6,1"}, {"n_episodes": 200, "seed": 3}
    dataset_dir = tmp_path / "my data"
    path = dataset.build("matrix-game", kwargs, recipe, str(dataset_dir))
    (path / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="meta.json is unreadable") as error:
        dataset.load("matrix-game", kwargs, recipe, str(dataset_dir))
    command = quoted_command(error.value.code)
    assert "--payoff '2,5;6,1'" in command and "--n-episodes 200 --seed 3" in command and command.endswith("--force")
    proc = run_command(command)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(path)
    dataset.load("matrix-game", kwargs, recipe, str(dataset_dir), build_if_missing=False)


def test_every_refusal_of_load_gives_a_forced_rebuild_command(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    damaged = [
        lambda m: {**m, "env_id": "matrix-game"},
        lambda m: {**m, "n_agents": 3},
        lambda m: {**m, "format_version": 99},
        lambda m: {k: v for k, v in m.items() if k != "content_sha256"},
        lambda m: [m],
    ]
    for damage in damaged:
        (path / "meta.json").write_text(json.dumps(damage(meta)))
        with pytest.raises(InputError) as error:
            dataset.load("dg", {}, TINY, str(tmp_path))
        command = quoted_command(error.value.code)
        assert command.startswith("python -m envs.collect --env-id dg --n-transitions 2000 --dataset-dir") and command.endswith("--force")


# ---- 5. stale temporary folders ----

def test_stale_temporary_folders_of_killed_builds_are_removed(tmp_path):
    final = dataset.dataset_path(str(tmp_path), "dg", *envs.resolve("dg", {}, TINY))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = [final.with_name(f"{final.name}.tmp-{dead}"), final.with_name(f"{final.name}.tmp-999999999999"),
             final.with_name(f"{final.name}.old-{dead}")]
    live = final.with_name(f"{final.name}.tmp-{os.getppid()}")  # a build still running: kept
    other = final.with_name(f"dg-0000000000.tmp-{dead}")  # another dataset's: not this build's business
    for folder in (*stale, live, other):
        folder.mkdir(parents=True)
        (folder / "agent_0.npz").write_text("half")
    dataset.build("dg", {}, TINY, str(tmp_path))
    assert not any(s.exists() for s in stale) and (final / "meta.json").exists()
    assert live.exists() and other.exists()


def test_no_temporary_folder_is_left_by_a_failed_build(tmp_path, monkeypatch):
    from envs import dg

    real = dg.collect

    def broken(env, agent_id, **recipe):
        if agent_id == 1:
            raise ValueError("dg: agent 1 failed")
        return real(env, agent_id, **recipe)

    monkeypatch.setattr(dg, "collect", broken)
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match="agent 1 failed"):
        dataset.build("dg", {}, TINY, str(tmp_path / "data"))
    assert leftovers(tmp_path) == ["data"]


# ---- 7. content hashes, format versions and value ranges ----

def test_meta_holds_the_content_sha256_of_every_agent_file(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format_version"] == dataset.FORMAT_VERSION == 2
    assert set(meta["content_sha256"]) == {"agent_0.npz", "agent_1.npz"}
    assert meta["content_sha256"] == dataset.content_fingerprint(path)
    import hashlib

    assert meta["content_sha256"]["agent_1.npz"] == hashlib.sha256((path / "agent_1.npz").read_bytes()).hexdigest()


def test_an_edited_file_is_refused_by_its_content_hash(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    data = arrays(path / "agent_1.npz")
    data["rewards"] = data["rewards"] + 1  # still well-formed: only the hash can tell
    np.savez(path / "agent_1.npz", **data)
    dataset.load("dg", {}, TINY, str(tmp_path), agent_ids=[0])  # agent 0's file is untouched
    with pytest.raises(InputError, match="agent_1.npz is not the file that was built"):
        dataset.load("dg", {}, TINY, str(tmp_path))


def test_a_dataset_of_format_1_is_upgraded_in_place_once(tmp_path, capsys):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    want = meta["content_sha256"]
    meta["format_version"] = 1
    del meta["content_sha256"]
    (path / "meta.json").write_text(json.dumps(meta))
    _, data, loaded = dataset.load("dg", {}, TINY, str(tmp_path))
    assert "format 1, recording the SHA-256" in capsys.readouterr().out
    assert loaded["format_version"] == 2 and loaded["content_sha256"] == want
    on_disk = json.loads((path / "meta.json").read_text())
    assert on_disk["format_version"] == 2 and on_disk["content_sha256"] == want
    assert not list(path.glob("meta.json.tmp-*"))
    dataset.load("dg", {}, TINY, str(tmp_path))
    assert "recording" not in capsys.readouterr().out  # once
    data = arrays(path / "agent_1.npz")  # from now on a changed file is refused
    data["rewards"] = data["rewards"] + 1
    np.savez(path / "agent_1.npz", **data)
    with pytest.raises(InputError, match="agent_1.npz is not the file that was built"):
        dataset.load("dg", {}, TINY, str(tmp_path))


def test_a_dataset_of_an_unknown_format_is_refused_with_the_rebuild_command(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 7
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"has format 7, this code reads 2 \(this code does not know.*--force`") as error:
        dataset.load("dg", {}, TINY, str(tmp_path))
    assert run_command(quoted_command(error.value.code)).returncode == 0
    assert dataset.load("dg", {}, TINY, str(tmp_path))[2]["format_version"] == 2


@pytest.mark.parametrize("change, message", [
    (lambda d: {"actions": d["actions"] * 3}, r"actions outside the action range \[-1, 1\]"),
    (lambda d: {"dones": d["timeouts"].copy()}, "both terminal and a time limit"),
    (lambda d: {k: v[:0] for k, v in d.items()}, "holds no transitions"),
])
def test_values_out_of_range_are_refused(tmp_path, change, message):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    data = arrays(path / "agent_0.npz")
    data.update(change(data))
    rewrite(path / "agent_0.npz", data)
    with pytest.raises(InputError, match=f"{message}.*rebuild it with `python -m envs.collect --env-id dg"):
        dataset.load("dg", {}, TINY, str(tmp_path))


@pytest.mark.parametrize("change, message", [
    (lambda d: {"actions": d["actions"] + 5}, r"actions outside \[0, 2\)"),
    (lambda d: {"avail_actions": np.eye(2, dtype=bool)[1 - d["actions"]]}, "not available under its mask"),
])
def test_discrete_actions_out_of_range_or_masked_are_refused(tmp_path, change, message):
    recipe = {"n_episodes": 200}
    path = dataset.build("matrix-game", {}, recipe, str(tmp_path))
    data = arrays(path / "agent_1.npz")
    data.update(change(data))
    rewrite(path / "agent_1.npz", data)
    with pytest.raises(InputError, match=message):
        dataset.load("matrix-game", {}, recipe, str(tmp_path))


# ---- 8. partial folders and concurrent builders ----

def test_a_partial_folder_is_refused_not_reused_and_force_replaces_it(tmp_path):
    final = dataset.dataset_path(str(tmp_path / "data"), "dg", *envs.resolve("dg", {}, TINY))
    final.mkdir(parents=True)
    (final / "agent_0.npz").write_text("half")
    with pytest.raises(InputError, match="exists but holds no meta.json.*--force`") as error:
        dataset.load("dg", {}, TINY, str(tmp_path / "data"))
    with pytest.raises(InputError, match="exists without meta.json"):
        dataset.build("dg", {}, TINY, str(tmp_path / "data"))
    assert "exists without meta.json" in one_line_error(collect(tmp_path, "--env-id", "dg", "--n-transitions", "2000"))
    assert run_command(quoted_command(error.value.code)).returncode == 0
    dataset.load("dg", {}, TINY, str(tmp_path / "data"))
    assert leftovers(tmp_path / "data") == sorted([final.name, *(f"{final.name}/{f}" for f in ("agent_0.npz", "agent_1.npz", "meta.json"))])


def test_force_replaces_a_whole_dataset_in_one_step(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    (path / "marker").write_text("old")
    assert dataset.build("dg", {}, TINY, str(tmp_path)) == path and (path / "marker").exists()  # kept without replace
    assert dataset.build("dg", {}, TINY, str(tmp_path), replace=True) == path
    assert not (path / "marker").exists() and [p.name for p in tmp_path.iterdir()] == [path.name]
    dataset.load("dg", {}, TINY, str(tmp_path))


def test_concurrent_builders_of_one_dataset_both_succeed_and_keep_one_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "envs.collect", "--env-id", "dg", "--n-transitions", "50000", "--dataset-dir", str(tmp_path)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    (folder,) = tmp_path.iterdir()
    assert {o[0].strip().splitlines()[-1] for o in outs} == {str(folder)}
    dataset.load("dg", {}, {"n_transitions": 50000}, str(tmp_path), build_if_missing=False)


# ---- 6. the benchmark tables run as scripts ----

@pytest.mark.parametrize("script", ["datasets_table.py", "behavior_table.py", "smax_references.py", "cn_references.py"])
def test_benchmark_tables_run_as_scripts(script, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmark" / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_datasets_table_on_an_empty_or_odd_dataset_dir(tmp_path):
    def table(folder):
        return subprocess.run([sys.executable, str(ROOT / "benchmark" / "datasets_table.py"), "--dataset-dir", str(folder)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "no-minari-store")})

    (tmp_path / "empty").mkdir()
    proc = table(tmp_path / "empty")
    assert proc.returncode == 0 and "no dataset with a summary" in proc.stdout, proc.stderr
    (tmp_path / "empty" / "smax-3m-0123456789.tmp-1").mkdir()  # a build under way, and a damaged meta.json
    (tmp_path / "empty" / "smax-3m-0123456789.tmp-1" / "meta.json").write_text("{}")
    (tmp_path / "empty" / "smax-3m-9876543210").mkdir()
    (tmp_path / "empty" / "smax-3m-9876543210" / "meta.json").write_text("{not json")
    proc = table(tmp_path / "empty")
    assert proc.returncode == 0 and "no dataset with a summary" in proc.stdout, proc.stderr
    assert "skipped" in proc.stderr and "smax-3m-9876543210" in proc.stderr
    proc = table(tmp_path / "missing")
    assert proc.returncode == 0 and "no dataset with a summary" in proc.stdout, proc.stderr


# ---- A. layers without circles ----

ADAPTERS = ["envs.dg", "envs.matrix_game", "envs.mamujoco", "envs.smax"]


@pytest.mark.parametrize("module", ADAPTERS + ["envs", "envs.dataset"])
def test_adapters_import_no_learner_and_envs_stays_light(module):
    code = (f"import sys, {module}; print(sorted(k for k in sys.modules "
            "if k.startswith(('envs.behavior', 'envs.recipes', 'torch', 'jax'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_making_an_adapters_env_imports_no_learner():
    """Not only importing: using an adapter (make, step, scores, the heuristic) pulls in no learner or recipe."""
    code = ("import sys, numpy as np, envs.dg, envs.matrix_game, envs.mamujoco as m\n"
            "envs.dg.make().reset(2, np.random.default_rng(0)); envs.matrix_game.make().reset(2)\n"
            "m.normalized_score('hopper-3x1', 100.0); m.make('hopper-3x1').reset(1, np.random.default_rng(0))\n"
            "print(sorted(k for k in sys.modules if k.startswith(('envs.behavior', 'envs.recipes'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def envs_imports() -> dict:
    """module -> the envs modules it imports anywhere in its source (lazy imports inside functions too)."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in (ROOT / "envs").rglob("*.py")}
    imports = {}
    for name, path in files.items():
        found = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.startswith("envs"):
                    found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("envs")}
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("envs."):
                found.add(node.value.partition(":")[0])  # the registry's "module:attribute" strings
        imports[name] = found & set(files) - {name}
    return imports


def test_no_module_of_envs_imports_one_that_imports_it_back():
    """The layers of envs/__init__.py: adapters <- learners <- recipes, never a circle (read off the source).
    `import envs` itself (InputError, the registry) is the root every module may use; it imports entries by name."""
    imports = {k: v - {"envs"} for k, v in envs_imports().items() if k != "envs"}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in imports.get(start, ()))

    circles = [(a, b) for a in imports for b in imports[a] if reaches(b, a)]
    assert not circles, circles


def test_layers():
    imports = envs_imports()
    adapters = ["envs.dg", "envs.matrix_game", "envs.mamujoco", "envs.smax", "envs.cn"]
    for adapter in adapters:
        assert not {m for m in imports.get(adapter, ()) if m.startswith(("envs.behavior", "envs.recipes", "envs.dataset"))}, adapter
    for learner in ("envs.behavior.sac", "envs.behavior.mappo"):
        assert imports[learner] <= {"envs", *adapters}, (learner, imports[learner])
    for recipe in ("envs.recipes.mamujoco", "envs.recipes.smax"):
        assert imports[recipe] <= {"envs", *adapters, "envs.behavior.sac", "envs.behavior.mappo"}, (recipe, imports[recipe])
