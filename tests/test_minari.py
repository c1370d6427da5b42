"""Minari datasets split per agent (envs/minari_split.py, Table 10): a real Minari store made by the test."""

import numpy as np
import pytest

import conftest
import envs
from envs import minari_split


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temporary Minari store holding tiny D4RL-like datasets written with Minari's own writer."""
    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))
        for robot, quality in (("hopper", "medium-expert"), ("ant", "random")):
            minari_split.build(robot, quality, n_steps=300, episode_len=100)
    return path


@pytest.fixture
def minari_env(store, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))


def test_built_dataset_is_a_minari_dataset_of_the_v5_robot(minari_env):
    dataset = minari_split.load_minari("odmarl/hopper/medium-expert-v0")
    assert dataset.spec.env_spec.id == "Hopper-v5" and dataset.total_steps == 600  # medium then expert
    episode = next(dataset.iterate_episodes())
    assert episode.observations.shape[0] == len(episode.rewards) + 1


@pytest.mark.parametrize("dataset_id, partition, n_agents", [
    ("odmarl/hopper/medium-expert-v0", "", 3), ("odmarl/hopper/medium-expert-v0", "1x3", 1), ("odmarl/ant/random-v0", "", 2),
])
def test_split_slices_reassemble_the_joint_action(minari_env, dataset_id, partition, n_agents):
    env = envs.make(f"minari:{dataset_id}", partition=partition)
    assert env.n_agents == n_agents
    parts = [minari_split.collect(env, i) for i in range(n_agents)]
    joint = np.concatenate([np.asarray(e.actions, np.float32) for e in minari_split.load_minari(dataset_id).iterate_episodes()])
    np.testing.assert_array_equal(env.merge([p["actions"] for p in parts]), joint)  # ant's partition is not contiguous
    for p in parts:  # every agent: the full state, the shared reward, terminals and time limits kept apart
        np.testing.assert_array_equal(p["obs"], parts[0]["obs"])
        np.testing.assert_array_equal(p["rewards"], parts[0]["rewards"])
        assert not (p["dones"] & p["timeouts"]).any() and (p["dones"] | p["timeouts"]).sum() >= 3


def test_matd3bc_trains_on_a_split_minari_dataset(minari_env, tmp_path):
    flags = ["--env-id", "minari:odmarl/hopper/medium-expert-v0", "--total-steps", "40", "--eval-freq", "20", "--vae-steps", "5",
             "--eval-episodes", "2", "--hidden-dim", "16", "--batch-size", "16", "--analysis-states", "50", "--exp-name", "m"]
    conftest.run_script("matd3bc.py", tmp_path, *flags)
    conftest.run_script("matd3bc.py", tmp_path, *flags[:-1], "single", "--partition", "1x3")
    res, _ = conftest.find_run(tmp_path, "m")
    assert res["status"] == "complete" and res["agent_ids"] == [0, 1, 2]
    assert np.isfinite(res["final"]["normalized_score"]) and res["env_kwargs"]["partition"] == "3x1"
    single, _ = conftest.find_run(tmp_path, "single")
    assert single["agent_ids"] == [0] and "value_difference" not in single["final"]


def test_unknown_ids_and_partitions_are_refused_in_one_line(minari_env, tmp_path):
    message = conftest.one_line_error(conftest.run_script(
        "matd3bc.py", tmp_path, "--env-id", "minari:mujoco/hopper/medium-v0", check=False))
    assert "not in the local store" in message and "`minari download mujoco/hopper/medium-v0`" in message
    message = conftest.one_line_error(conftest.run_script(
        "matd3bc.py", tmp_path, "--env-id", "minari:odmarl/hopper/medium-expert-v0", "--partition", "2x2", check=False))
    assert "--partition 2x2 does not fit Hopper" in message
    message = conftest.one_line_error(conftest.run_script("matd3bc.py", tmp_path, "--env-id", "minari:foo/bar-v0", check=False))
    assert "cannot tell the robot" in message
    assert not (tmp_path / "runs").exists()


def test_a_build_that_fails_leaves_the_store_as_it_was_and_a_rebuild_replaces_in_one_rename(tmp_path, monkeypatch):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    minari_split.build("hopper", "random", n_steps=200, episode_len=100)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    def dies_half_way(dataset_id, *args, **kwargs):  # a partial dataset in the staging store, then the build dies
        (minari.storage.get_dataset_path(dataset_id) / "data").mkdir(parents=True)
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(minari, "create_dataset_from_buffers", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            minari_split.build("hopper", "random", n_steps=200, episode_len=100, seed=1)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no staging left, nothing touched
    minari_split.build("hopper", "random", n_steps=300, episode_len=100, seed=1)
    assert minari_split.load_minari("odmarl/hopper/random-v0").total_steps == 300
    assert minari.list_local_datasets().keys() == {"odmarl/hopper/random-v0"}


def test_datasets_table_lists_the_minari_stores_odmarl_datasets(minari_env):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(conftest.ROOT) / "benchmark"))
    import datasets_table

    rows = datasets_table.minari_rows()
    assert len(rows) == 4 and rows[2].startswith("| odmarl/ant/random-v0 |") and rows[3].startswith("| odmarl/hopper/medium-expert-v0 |")
    cells = rows[3].strip("|").split("|")
    assert int(cells[2].replace(",", "")) == 600 and int(cells[1]) >= 6  # medium then expert, 100-step episodes at most
