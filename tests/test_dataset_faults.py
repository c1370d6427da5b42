"""Every fault found on main ends in one line that names the problem and the fix, and leaves nothing behind."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest

import conftest
from conftest import ROOT, one_line_error
from envs import InputError, dataset

TINY = {"n_transitions": 2000}


def collect(tmp_path, *flags):
    return subprocess.run([sys.executable, "-m", "envs.collect", "--dataset-dir", str(tmp_path / "data"), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, message", [
    (["--n-transitions", "0"], "dg: --n-transitions must be > 0, got 0"),
    (["--n-transitions", "-5"], "dg: --n-transitions must be > 0, got -5"),
    (["--episode-len", "0"], "dg: --episode-len must be > 0"),
    (["--seed", "-1"], "dg: --seed must be >= 0"),
    (["--eval-episode-len", "0"], "dg: --eval-episode-len must be > 0"),
])
def test_collect_refuses_options_out_of_range_before_writing(tmp_path, flags, message):
    assert message in one_line_error(collect(tmp_path, "--env-id", "dg", *flags))
    assert not (tmp_path / "data").exists()


def test_scripts_refuse_an_empty_dataset_before_writing(tmp_path):
    proc = conftest.run_script("matd3bc.py", tmp_path, "--n-transitions", "0", check=False)
    assert "dg: --n-transitions must be > 0, got 0" in one_line_error(proc)
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "runs").exists()


def test_dataset_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in one_line_error(collect(tmp_path, "--env-id", "dg", "--dataset-dir", str(tmp_path / "file")))
    proc = collect(tmp_path, "--env-id", "dg", "--dataset-dir", str(tmp_path / "file" / "sub"))
    assert "cannot be created" in one_line_error(proc)


def test_a_truncated_file_is_refused_with_a_command_that_rebuilds_it(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path / "data"))
    file = path / "agent_0.npz"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(InputError, match="rebuild it with `python -m envs.collect --env-id dg --n-transitions 2000") as error:
        dataset.load("dg", {}, TINY, str(tmp_path / "data"))
    # collect no longer says "exists" about it: it says what is wrong and how to fix it
    message = one_line_error(collect(tmp_path, "--env-id", "dg", "--n-transitions", "2000"))
    assert "agent_0.npz" in message and "--force" in message
    # and the command it gives works
    command = str(error.value.code).split("`")[1]
    proc = subprocess.run(shlex.split(command.replace("python", sys.executable, 1)), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dataset.load("dg", {}, TINY, str(tmp_path / "data"))


def test_an_edited_file_is_refused_by_its_content_hash(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    with np.load(path / "agent_1.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    data["rewards"] = data["rewards"] + 1  # still well-formed: only the hash can tell
    np.savez(path / "agent_1.npz", **data)
    dataset.load("dg", {}, TINY, str(tmp_path), agent_ids=[0])  # agent 0's file is untouched
    with pytest.raises(InputError, match="agent_1.npz is not the file that was built"):
        dataset.load("dg", {}, TINY, str(tmp_path))


def test_a_dataset_built_before_content_hashes_is_validated_and_stamped(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    hashes = meta.pop("content_sha256")
    (path / "meta.json").write_text(json.dumps(meta))
    dataset.load("dg", {}, TINY, str(tmp_path))
    assert json.loads((path / "meta.json").read_text())["content_sha256"] == hashes


def test_stale_temporary_folders_of_killed_builds_are_removed(tmp_path):
    final = dataset.dataset_path(str(tmp_path), "dg", *__import__("envs").resolve("dg", {}, TINY))
    stale = final.with_name(f"{final.name}.tmp-999999999")  # no such process
    stale.mkdir(parents=True)
    (stale / "agent_0.npz").write_text("half")
    dataset.build("dg", {}, TINY, str(tmp_path))
    assert not stale.exists() and (final / "meta.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


@pytest.mark.parametrize("arrays, message", [
    (lambda d: {"actions": d["actions"] * 3}, "actions outside the action range"),
    (lambda d: {"dones": d["timeouts"].copy()}, "both terminal and a time limit"),
])
def test_values_out_of_range_are_refused(tmp_path, arrays, message):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    with np.load(path / "agent_0.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    data.update(arrays(data))
    np.savez(path / "agent_0.npz", **data)
    meta = json.loads((path / "meta.json").read_text())
    del meta["content_sha256"]["agent_0.npz"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=message):
        dataset.load("dg", {}, TINY, str(tmp_path))


@pytest.mark.parametrize("script", ["datasets_table.py", "behavior_table.py"])
def test_benchmark_tables_run_as_scripts(script, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmark" / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


ADAPTERS = ["envs.dg", "envs.matrix_game", "envs.mamujoco", "envs.smax"]


@pytest.mark.parametrize("module", ADAPTERS + ["envs"])
def test_adapters_import_no_learner_and_envs_stays_light(module):
    code = (f"import sys, {module}; print(sorted(k for k in sys.modules "
            "if k.startswith(('envs.behavior', 'envs.recipes', 'torch', 'jax'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_no_module_of_envs_imports_one_that_imports_it_back():
    """The layers of envs/__init__.py: adapters <- learners <- recipes, never a circle (read off the source)."""
    import ast

    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in (ROOT / "envs").rglob("*.py")}
    imports = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("envs"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("envs")}
        imports[name] = found & set(files) - {name, "envs"}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in imports.get(start, ()))

    circles = [(a, b) for a in imports for b in imports[a] if reaches(b, a)]
    assert not circles, circles
