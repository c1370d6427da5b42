"""The matrix game env (envs/matrix_game.py) and its per-agent datasets."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs
from envs import InputError, dataset, matrix_game

ROOT = Path(__file__).resolve().parents[1]


def test_registered_with_defaults_of_table_1():
    env = envs.make("matrix-game")
    assert envs.env_module("matrix-game") is matrix_game
    np.testing.assert_array_equal(env.payoff, [[1, 5], [6, 1]])
    np.testing.assert_allclose(env.behavior[0], [0.8, 0.2])
    np.testing.assert_allclose(env.behavior[1], [0.4, 0.6])
    assert env.discrete and env.n_agents == 2 and env.act_dims == [2, 2]
    assert env.obs_dims == [5, 5] and env.state_dim == 5 and env.eval_episode_len == 2


@pytest.mark.parametrize("a0, a1", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_two_steps_reward_then_terminal(a0, a1):
    env = envs.make("matrix-game")
    obs = env.reset(3)
    assert all((o == [1, 0, 0, 0, 0]).all() for o in obs)
    assert all(m.all() and m.shape == (3, 2) for m in env.avail_actions())
    obs, reward, terminated = env.step([np.full(3, a0), np.full(3, a1)])
    expected = np.zeros(5, np.float32)
    expected[1 + 2 * a0 + a1] = 1
    assert (obs[0] == expected).all() and (obs[1] == expected).all()  # both agents see the joint outcome
    assert (reward == 0).all() and not terminated.any()
    obs, reward, terminated = env.step([np.zeros(3, int), np.ones(3, int)])  # step-2 actions change nothing
    assert (reward == [[1, 5], [6, 1]][a0][a1]).all() and terminated.all()
    assert (obs[0] == 0).all()


def test_any_n_by_m_game():
    env = envs.make("matrix-game", payoff="1,2;3,4;5,6", behavior="0.2,0.3,0.5;0.5,0.5")
    assert env.act_dims == [3, 2] and env.state_dim == 7
    env.reset(2)
    obs, r, _ = env.step([np.array([2, 1]), np.array([1, 0])])
    assert obs[0][0].argmax() == 1 + 2 * 2 + 1 and obs[0][1].argmax() == 1 + 1 * 2 + 0
    _, r, done = env.step([np.zeros(2, int), np.zeros(2, int)])
    assert r.tolist() == [6, 3] and done.all()
    with pytest.raises(ValueError, match="agent 1 needs"):
        env.reset(1)
        env.step([np.array([0]), np.array([2])])  # agent 1 has only 2 actions


@pytest.mark.parametrize("kwargs, message", [
    (dict(payoff="1,5;6"), "rows differ in length"),
    (dict(payoff="1,x;6,1"), "must be rows of numbers"),
    (dict(payoff="1,nan;6,1"), "NaN or inf"),
    (dict(behavior="0.8,0.2"), "one row per agent"),
    (dict(behavior="0.8,0.2,0;0.4,0.6"), "row 0 has 3 probabilities"),
    (dict(behavior="0.8,0.3;0.4,0.6"), "sum to 1"),
    (dict(behavior="1.2,-0.2;0.4,0.6"), "non-negative"),
])
def test_bad_options_give_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        matrix_game.make(**kwargs)
    with pytest.raises(InputError) as e:  # envs.make turns them into a one-line exit
        envs.make("matrix-game", **kwargs)
    assert message.split()[0] in str(e.value.code) and "\n" not in str(e.value.code)


def test_collect_per_agent_datasets():
    env = envs.make("matrix-game")
    n = 20_000
    data = [matrix_game.collect(env, i, n_episodes=n, seed=3) for i in range(2)]
    for i, d in enumerate(data):
        dataset.validate(d, env, i, f"agent {i}")  # shapes, dtypes, masks
        assert len(d["rewards"]) == 2 * n and "states" in d
        first = d["obs"][:, 0] == 1
        assert first[0::2].all() and not first[1::2].any()  # episode-major: (start, outcome) pairs
        assert (d["dones"] == ~first).all() and not d["timeouts"].any()
        assert (d["rewards"][first] == 0).all() and (d["next_obs"][~first] == 0).all()
        assert d["avail_actions"].all() and d["next_avail_actions"].all()
        assert (d["states"] == d["obs"]).all()
        # the agent's own action is its behaviour policy, the other's shows in the outcome
        own = d["actions"][first]
        outcome = d["next_obs"][first, 1:].argmax(1)
        other = outcome % 2 if i == 0 else outcome // 2
        np.testing.assert_allclose(np.bincount(own) / n, env.behavior[i], atol=0.01)
        np.testing.assert_allclose(np.bincount(other) / n, env.behavior[1 - i], atol=0.01)
        assert ((outcome // 2 if i == 0 else outcome % 2) == own).all()
        # the outcome's payoff is the reward of the second step
        assert (d["rewards"][~first] == env.payoff.reshape(-1)[outcome]).all()
    # each agent has its own episodes: stream [seed, agent id]
    assert not np.array_equal(data[0]["next_obs"], data[1]["next_obs"])
    again = matrix_game.collect(env, 1, n_episodes=n, seed=3)
    assert all(np.array_equal(again[k], data[1][k]) for k in again)


def test_other_payoff_or_behavior_never_reuses_a_dataset(tmp_path):
    recipe = {"n_episodes": 500}
    path_a = dataset.build("matrix-game", {}, recipe, str(tmp_path))
    kwargs_a, recipe_a = envs.resolve("matrix-game", {}, recipe)
    other = {"payoff": "2,5;6,1"}
    kwargs_b, _ = envs.resolve("matrix-game", other, recipe)
    path_b = dataset.dataset_path(str(tmp_path), "matrix-game", kwargs_b, recipe_a)
    assert path_b != path_a
    path_c = dataset.dataset_path(str(tmp_path), "matrix-game", envs.resolve("matrix-game", {"behavior": "0.5,0.5;0.4,0.6"})[0], recipe_a)
    assert path_c not in (path_a, path_b)
    with pytest.raises(InputError, match="no dataset at"):
        dataset.load("matrix-game", other, recipe, str(tmp_path), build_if_missing=False)
    # a folder of payoff A found under payoff B's name is refused, not silently used
    shutil.copytree(path_a, path_b)
    with pytest.raises(InputError, match="was built for env_kwargs"):
        dataset.load("matrix-game", other, recipe, str(tmp_path))
    shutil.rmtree(path_b)
    env, data, meta = dataset.load("matrix-game", other, recipe, str(tmp_path))  # builds its own
    assert meta["env_kwargs"] == kwargs_b and json.loads((path_a / "meta.json").read_text())["env_kwargs"] == kwargs_a
    assert set(data[0]["rewards"][data[0]["dones"]]) <= {2, 5, 6, 1} and 2 in data[0]["rewards"]


def test_collect_cli(tmp_path):
    cmd = [sys.executable, "-m", "envs.collect", "--env-id", "matrix-game", "--dataset-dir", str(tmp_path),
           "--n-episodes", "300", "--payoff", "1,5;6,1", "--behavior", "0.5,0.5;0.4,0.6"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    meta = json.loads((path / "meta.json").read_text())
    assert meta["env_kwargs"]["behavior"] == "0.5,0.5;0.4,0.6" and meta["n_transitions"] == [600, 600]
    bad = subprocess.run(cmd[:-2] + ["--behavior", "0.5,0.6;0.4,0.6"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: matrix-game: --behavior row 0")
