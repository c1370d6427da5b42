"""The env registry, the DG adapter and the per-agent dataset format."""

import json

import numpy as np
import pytest

import envs
from envs import InputError, dataset, dg

TINY = {"n_transitions": 2000}


def test_unknown_env_id_lists_known_ids():
    with pytest.raises(InputError, match="unknown env id 'nope'; known ids: dg"):
        envs.make("nope")


def test_unknown_option_is_refused():
    with pytest.raises(InputError, match="no env option"):
        envs.make("dg", colour="red")


def test_dg_reward_matches_the_paper_formula():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.3, 0.0], [0.6, 0.0], [1.0, 0.0], [1.0, 1.0]])
    l = np.array([0.0, 0.1, 0.3, 0.6, 1.0, np.sqrt(2)])
    expected = [1.0, 0.5 * (np.cos(1.5) + 1), 0.0, 0.0, 0.5 * 0.4**2, 0.5 * (np.sqrt(2) - 0.6) ** 2]
    np.testing.assert_allclose(dg.reward(x), expected)
    assert np.all(np.diff(dg.reward(np.stack([l, np.zeros_like(l)], 1))[:2]) < 0)


def test_dg_step_moves_by_a_tenth_clips_and_rewards_the_state_before_the_move():
    env = envs.make("dg")
    env.reset(2, np.random.default_rng(0))
    env.state = np.array([[0.0, 0.0], [0.95, -0.95]])
    obs, r, terminated = env.step([np.array([[1.0], [1.0]]), np.array([[-0.5], [-1.0]])])
    np.testing.assert_allclose(env.state, [[0.1, -0.05], [1.0, -1.0]])
    assert r[0] == pytest.approx(1.0)  # reward of (0, 0), before the move
    assert not terminated.any()
    np.testing.assert_allclose(obs[0], [[0.1, -0.05], [1.0, -1.0]])  # own position first
    np.testing.assert_allclose(obs[1], [[-0.05, 0.1], [-1.0, 1.0]])


def test_dg_partial_observation_is_own_position():
    env = envs.make("dg", obs="partial")
    assert env.obs_dims == [1, 1]
    obs = env.observe(np.array([[0.2, -0.3]]))
    assert obs[0].tolist() == [[pytest.approx(0.2)]] and obs[1].tolist() == [[pytest.approx(-0.3)]]
    with pytest.raises(InputError, match="--obs must be 'full' or 'partial'"):
        envs.make("dg", obs="half")


def test_dg_datasets_are_independent_uniform_episodes_with_timeouts(tmp_path):
    env, data, meta = dataset.load("dg", {"obs": "full"}, TINY, str(tmp_path))
    a0, a1 = data[0], data[1]
    assert len(a0["rewards"]) == 2000 and meta["n_transitions"] == [2000, 2000]
    assert not np.array_equal(a0["states"], a1["states"])  # each agent's own episodes
    assert not a0["dones"].any()  # no terminal states in DG, only time limits
    np.testing.assert_array_equal(np.flatnonzero(a0["timeouts"]), np.arange(24, 2000, 25))
    # transitions chain within an episode and the observation is the agent's view of the state
    np.testing.assert_allclose(a0["next_obs"][:24], a0["obs"][1:25])
    np.testing.assert_allclose(a0["obs"], a0["states"])
    np.testing.assert_allclose(a1["obs"], a1["states"][:, ::-1])
    np.testing.assert_allclose(a0["rewards"], dg.reward(a0["states"].astype(np.float64)), atol=1e-5)
    assert np.abs(a0["actions"]).max() <= 1 and a0["actions"].std() > 0.5  # uniform in [-1, 1]
    move = (a0["next_obs"][:, 0] - a0["obs"][:, 0])
    inside = np.abs(a0["next_obs"][:, 0]) < 1
    np.testing.assert_allclose(move[inside], 0.1 * a0["actions"][inside, 0], atol=1e-6)


def test_dataset_is_rebuilt_identically_from_its_seed(tmp_path):
    _, first, _ = dataset.load("dg", {}, TINY, str(tmp_path / "a"))
    _, second, _ = dataset.load("dg", {}, TINY, str(tmp_path / "b"))
    for key in first[0]:
        np.testing.assert_array_equal(first[0][key], second[0][key])


def test_another_recipe_goes_to_another_folder(tmp_path):
    a = dataset.dataset_path(str(tmp_path), "dg", *envs.resolve("dg", {"obs": "full"}, TINY))
    b = dataset.dataset_path(str(tmp_path), "dg", *envs.resolve("dg", {"obs": "partial"}, TINY))
    c = dataset.dataset_path(str(tmp_path), "dg", *envs.resolve("dg", {"obs": "full"}, {"n_transitions": 3000}))
    assert len({a, b, c}) == 3


def test_only_the_requested_agents_files_are_read(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    (path / "agent_1.npz").unlink()
    _, data, _ = dataset.load("dg", {}, TINY, str(tmp_path), agent_ids=[0])
    assert list(data) == [0]
    with pytest.raises(InputError, match="cannot read .*agent_1.npz"):
        dataset.load("dg", {}, TINY, str(tmp_path), agent_ids=[1])


def test_no_temporary_folder_is_left_behind(tmp_path):
    dataset.build("dg", {}, TINY, str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [dataset.dataset_path(str(tmp_path), "dg", *envs.resolve("dg", {}, TINY)).name]


def _corrupt(tmp_path, drop=(), **arrays):
    """A fresh dataset whose agent_0.npz is rewritten with other arrays, its hash stamped in meta.json, so
    that only the array checks can object."""
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    with np.load(path / "agent_0.npz") as npz:
        data = {k: npz[k] for k in npz.files if k not in drop}
    data.update(arrays)
    np.savez(path / "agent_0.npz", **data)
    meta = json.loads((path / "meta.json").read_text())
    meta["content_sha256"]["agent_0.npz"] = dataset.file_sha256(path / "agent_0.npz")
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(InputError, match="no dataset at .*python -m envs.collect --env-id dg"):
        dataset.load("dg", {}, TINY, str(tmp_path), build_if_missing=False)


def test_nan_in_data_is_refused(tmp_path):
    rewards = np.zeros(2000, dtype=np.float32)
    rewards[7] = np.nan
    _corrupt(tmp_path, rewards=rewards)
    with pytest.raises(InputError, match="agent_0.npz: `rewards` holds NaN or inf"):
        dataset.load("dg", {}, TINY, str(tmp_path))


def test_wrong_dtype_and_shape_are_refused(tmp_path):
    _corrupt(tmp_path / "a", obs=np.zeros((2000, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"`obs` is float32\[2000, 3\], expected float32\[2000, 2\]; rebuild it with `python"):
        dataset.load("dg", {}, TINY, str(tmp_path / "a"))
    _corrupt(tmp_path / "b", dones=np.zeros(2000, dtype=np.float32))
    with pytest.raises(InputError, match="`dones` is float32"):
        dataset.load("dg", {}, TINY, str(tmp_path / "b"))


def test_missing_array_is_refused(tmp_path):
    _corrupt(tmp_path, drop=("timeouts",))
    with pytest.raises(InputError, match=r"lacks arrays \['timeouts'\]"):
        dataset.load("dg", {}, TINY, str(tmp_path))


def test_metadata_of_another_env_is_refused(tmp_path):
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    meta["env_kwargs"]["obs"] = "partial"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="was built for env_kwargs="):
        dataset.load("dg", {}, TINY, str(tmp_path))
    (path / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="meta.json is unreadable"):
        dataset.load("dg", {}, TINY, str(tmp_path))


def test_pinned_package_version_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(dg, "PINNED_PACKAGES", ("numpy",), raising=False)
    path = dataset.build("dg", {}, TINY, str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    meta["versions"]["numpy"] = "0.0.1"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="built with numpy 0.0.1"):
        dataset.load("dg", {}, TINY, str(tmp_path))


def test_collect_cli_builds_and_refuses_foreign_options(tmp_path, capsys):
    from envs import collect

    collect.main(collect.Args(env_id="dg", dataset_dir=str(tmp_path), n_transitions=500, obs="partial"))
    assert "dg-" in capsys.readouterr().out
    _, data, _ = dataset.load("dg", {"obs": "partial"}, {"n_transitions": 500}, str(tmp_path), build_if_missing=False)
    assert data[0]["obs"].shape == (500, 1)


def test_dataset_from_other_behaviour_policies_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(dg, "fingerprint", lambda recipe: "policies-v1", raising=False)
    dataset.build("dg", {}, TINY, str(tmp_path))
    dataset.load("dg", {}, TINY, str(tmp_path))
    monkeypatch.setattr(dg, "fingerprint", lambda recipe: "policies-v2")
    with pytest.raises(InputError, match="built from other behaviour policies"):
        dataset.load("dg", {}, TINY, str(tmp_path))
