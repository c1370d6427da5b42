"""SMAX (envs/smax.py) on real jaxmarl SMAX: the adapter, the team evaluation and the datasets.

JIT compiles cost seconds per function and map, so the tests share one smax-3m env."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import envs
from envs import InputError, dataset, smax
from envs.recipes import smax as smax_recipe

STOP = 4


@pytest.fixture(scope="module")
def env():
    return envs.make("smax-3m")


def uniform_policy(rng):
    def policy(obs, avail):
        return [np.array([rng.choice(np.flatnonzero(row)) for row in a]) for a in avail]

    return policy


def test_registry_and_shapes(env):
    assert {"smax-3m", "smax-8m", "smax-3s_vs_3z", "smax-3s_vs_4z"} <= set(envs.REGISTRY)
    assert (env.n_agents, env.obs_dim, env.n_actions, env.state_dim) == (3, 75, 8, 72)
    assert env.discrete and env.obs_dims == [75] * 3 and env.act_dims == [8] * 3
    obs = env.reset(4, np.random.default_rng(0))
    assert len(obs) == 3 and obs[0].shape == (4, 75) and obs[0].dtype == np.float32
    avail = env.avail_actions()
    assert len(avail) == 3 and avail[0].shape == (4, 8) and avail[0].dtype == bool
    assert all(a[:, STOP].all() for a in avail)
    assert env.state.shape == (4, 72)


@pytest.mark.parametrize("env_id,allies,enemies,enemy_type", [("smax-3s_vs_3z", 3, 3, 3), ("smax-3s_vs_4z", 3, 4, 3)])
def test_registered_3s_maps(env_id, allies, enemies, enemy_type):
    e = envs.make(env_id)
    assert (e.n_agents, e.n_enemies, e.n_actions) == (allies, enemies, 5 + enemies)
    scenario = smax.jaxmarl_smax().map_name_to_scenario(env_id.removeprefix("smax-"))
    assert list(np.asarray(scenario.unit_types)) == [2] * allies + [enemy_type] * enemies  # stalkers vs zealots


def test_bad_options():
    with pytest.raises(InputError, match="--max-steps must be > 0"):
        envs.make("smax-3m", max_steps=0)
    with pytest.raises(InputError, match="no env option"):
        envs.make("smax-3m", obs="full")


def test_dead_agents_can_only_stop_and_ended_episodes_freeze(env):
    rng = np.random.default_rng(1)
    policy = uniform_policy(rng)
    obs = env.reset(16, rng)
    saw_dead = False
    for _ in range(env.max_steps):
        was_over = env.over.copy()
        before = [o.copy() for o in obs]
        obs, reward, ended = env.step(policy(obs, env.avail_actions()))
        assert (reward[was_over] == 0).all() and not ended[was_over].any()
        assert all((o[was_over] == b[was_over]).all() for o, b in zip(obs, before))
        alive = np.asarray(env._batch["state"].state.unit_alive)[:, : env.n_agents]  # [episodes, allies]
        for i, a in enumerate(env.avail_actions()):
            dead = ~alive[:, i]
            saw_dead |= dead.any()
            assert (a[dead] == np.eye(8, dtype=bool)[STOP]).all()
        if env.over.all():
            break
    assert saw_dead and env.over.all()


def test_illegal_action_is_refused(env):
    env.reset(2, np.random.default_rng(0))
    avail = env.avail_actions()
    bad = int(np.flatnonzero(~avail[0][0])[0])  # at the start no enemy is in range
    with pytest.raises(ValueError, match="not available"):
        env.step([np.array([bad, STOP]), np.array([STOP, STOP]), np.array([STOP, STOP])])


def test_reward_scale_a_win_returns_20(env):
    """Damage shares sum to 1 over a won episode, plus the win bonus 1, times 10."""
    result = smax.evaluate_team(env, smax.heuristic_policy(env, 0), 64, seed=0)
    returns = np.zeros(64)
    env.reset(64, np.random.default_rng(0))  # the same episodes again, to see each return
    policy = smax.heuristic_policy(env, 0)
    obs = env._agent_obs()
    for _ in range(env.max_steps):
        obs, reward, _ = env.step(policy(obs, env.avail_actions()))
        returns += reward
        if env.over.all():
            break
    assert 0.2 < result["win_rate"] < 0.8  # the mirror match: neither side sure to win
    assert env.won.any()
    np.testing.assert_allclose(returns[env.won], 20.0, atol=1e-3)
    assert (returns[~env.won] < 20.0).all()


def test_evaluate_team_uniform(env):
    result = smax.evaluate_team(env, uniform_policy(np.random.default_rng(0)), 32, seed=3)
    assert result["win_rate"] == 0.0  # uniform play does not win 3m
    assert 0.0 < result["return_mean"] < 10.0 and result["n_episodes"] == 32
    assert 1 <= result["episode_len_mean"] <= env.max_steps


def test_random_dataset_build_validate_and_summary(env, tmp_path):
    path = dataset.build("smax-3m", recipe=dict(quality="random", n_episodes=20), dataset_dir=str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    assert meta["versions"]["jaxmarl"] and meta["versions"]["jax"] and meta["discrete"]
    _, data, _ = dataset.load("smax-3m", recipe=dict(quality="random", n_episodes=20), dataset_dir=str(tmp_path), build_if_missing=False)
    for i, d in data.items():
        summary = smax_recipe.dataset_summary(d)
        assert summary["episodes"] == 20 and summary["transitions"] == len(d["rewards"]) and summary["win_rate"] == 0.0
        assert d["avail_actions"][np.arange(len(d["actions"])), d["actions"]].all()  # masks never violated
        assert d["avail_actions"][:, STOP].all() and d["next_avail_actions"][:, STOP].all()
        ends = d["dones"] | d["timeouts"]
        assert ends[-1] and not (d["dones"] & d["timeouts"]).any()
        # inside an episode, o' of one step is o of the next
        inside = np.flatnonzero(~ends[:-1])
        np.testing.assert_array_equal(d["next_obs"][inside], d["obs"][inside + 1])
        np.testing.assert_array_equal(d["next_avail_actions"][inside], d["avail_actions"][inside + 1])
    assert not np.array_equal(data[0]["obs"][:50], data[1]["obs"][:50])  # each agent from its own episodes


def test_dataset_refused_under_other_jaxmarl(env, tmp_path):
    recipe = dict(quality="random", n_episodes=2)
    path = dataset.build("smax-3m", recipe=recipe, dataset_dir=str(tmp_path))
    meta = json.loads((path / "meta.json").read_text())
    meta["versions"]["jaxmarl"] = "0.0.1"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="jaxmarl 0.0.1"):
        dataset.load("smax-3m", recipe=recipe, dataset_dir=str(tmp_path), build_if_missing=False)


def test_bad_recipes(tmp_path):
    with pytest.raises(InputError, match="quality"):
        dataset.build("smax-3m", recipe=dict(quality="great", n_episodes=2), dataset_dir=str(tmp_path))
    with pytest.raises(InputError, match="no expert behaviour policy"):
        dataset.build("smax-3m", recipe=dict(quality="expert", n_episodes=2, behavior_dir=str(tmp_path)), dataset_dir=str(tmp_path))
    with pytest.raises(InputError, match="no recorded training transitions"):
        dataset.build("smax-3m", recipe=dict(quality="replay", n_episodes=2, replay_dir=str(tmp_path / "none")), dataset_dir=str(tmp_path))
    assert not list(tmp_path.glob("smax-3m-*"))  # nothing half-written


def write_fake_replay(folder: Path, env, lengths_per_stream, chunk_len):
    """Recorded streams in the learner's format: stream j is agent j % N's view; obs[..., 0]
    holds (episode number within the stream), obs[..., 1] the step within the episode."""
    n_streams = len(lengths_per_stream)
    folder.mkdir(parents=True)
    (folder / "streams.json").write_text(json.dumps({"agent_of_stream": [j % env.n_agents for j in range(n_streams)]}))
    total = sum(lengths_per_stream[0])
    assert all(sum(ls) == total for ls in lengths_per_stream)
    A, T = env.n_actions, total
    arrays = dict(
        obs=np.zeros((T, n_streams, env.obs_dim), np.float32), next_obs=np.zeros((T, n_streams, env.obs_dim), np.float32),
        actions=np.full((T, n_streams), STOP, np.int64), avail=np.ones((T, n_streams, A), bool), next_avail=np.ones((T, n_streams, A), bool),
        rewards=np.zeros((T, n_streams), np.float32), states=np.zeros((T, n_streams, env.state_dim), np.float32),
        dones=np.zeros((T, n_streams), bool), timeouts=np.zeros((T, n_streams), bool), won=np.zeros((T, n_streams), bool),
        first=np.zeros((T, n_streams), bool),
    )
    for j, lengths in enumerate(lengths_per_stream):
        t = 0
        for e, n in enumerate(lengths):
            arrays["obs"][t : t + n, j, 0] = e
            arrays["obs"][t : t + n, j, 1] = np.arange(n)
            arrays["first"][t, j] = True
            arrays["dones"][t + n - 1, j] = e % 2 == 0
            arrays["timeouts"][t + n - 1, j] = e % 2 == 1
            arrays["won"][t + n - 1, j] = e % 2 == 0
            arrays["rewards"][t : t + n, j] = 1.0
            t += n
    arrays["first"][0, 0] = False  # stream 0 starts mid-episode (as after a cut): its first episode is not whole
    for c, start in enumerate(range(0, T, chunk_len)):
        np.savez_compressed(folder / f"chunk_{c:06d}.npz", **{k: v[start : start + chunk_len] for k, v in arrays.items()})


def test_replay_episodes_are_whole_and_spread(env, tmp_path):
    lengths = [[3, 5, 2, 7, 4, 3], [4, 4, 4, 4, 4, 4], [6, 6, 6, 6], [2, 10, 4, 4, 4]]  # 24 steps per stream
    write_fake_replay(tmp_path / "replay", env, lengths, chunk_len=5)  # episodes cross chunk files
    data = smax_recipe.replay_episodes(env, 0, 5, tmp_path / "replay")  # agent 0 owns streams 0 and 3
    ends = np.flatnonzero(data["dones"] | data["timeouts"])
    starts = np.r_[0, ends[:-1] + 1]
    assert len(ends) == 5  # stream 0 loses its cut first episode: 5 + 5 whole episodes, 5 chosen
    for s, e in zip(starts, ends):
        np.testing.assert_array_equal(data["obs"][s : e + 1, 1], np.arange(e - s + 1))  # whole and in order
        assert len(set(data["obs"][s : e + 1, 0])) == 1
    assert data["dones"].sum() + data["timeouts"].sum() == 5
    with pytest.raises(InputError, match="holds 10 whole training episodes of agent 0"):
        smax_recipe.replay_episodes(env, 0, 11, tmp_path / "replay")


def test_the_default_replay_is_the_first_learner_that_reached_its_target(env, tmp_path, monkeypatch):
    """A learner whose best actor stayed below its target win rate recorded a failed run: the default replay folder
    skips it for the next seed that learned, and a failed folder given or left as the only one is refused in one line."""
    monkeypatch.chdir(tmp_path)  # runs/ is looked up from the working directory
    lengths = [[4, 4, 4]] * 3
    for seed, best in ((1, 0.03), (2, 0.95)):
        folder = tmp_path / "runs" / f"smax-3m__mappo__{seed}" / "replay"
        write_fake_replay(folder, env, lengths, chunk_len=6)
        (folder / "returns.json").write_text(json.dumps({"target_win_rate": 0.8, "expert": {"win_rate": best}}))
    assert smax_recipe.replay_folder("smax-3m") == Path("runs/smax-3m__mappo__2/replay")
    assert smax_recipe.replay_folder("smax-3m", "runs/smax-3m__mappo__1/replay") == Path("runs/smax-3m__mappo__1/replay")
    assert len(smax_recipe.replay_chunks(env, smax_recipe.replay_folder("smax-3m"))) == 2
    with pytest.raises(InputError, match=r"failed learner: its best actor won 0\.03 .* below its target 0\.8.*--seed 3 "
                                         r".*then pass --replay-dir runs/smax-3m__mappo__3/replay"):
        smax_recipe.replay_chunks(env, Path("runs/smax-3m__mappo__1/replay"))  # given by --replay-dir
    shutil.rmtree(tmp_path / "runs" / "smax-3m__mappo__2")
    assert smax_recipe.replay_folder("smax-3m") == Path("runs/smax-3m__mappo__1/replay")  # none learned: seed 1's, refused
    with pytest.raises(InputError, match=r"mappo --env-id smax-3m --seed 2 --weights-dir runs/mappo-actors-2` \(about 4 min.*"
                                         r"the replay datasets then read the first seed that reached it"):
        dataset.build("smax-3m", recipe=dict(quality="replay", n_episodes=2), dataset_dir=str(tmp_path / "datasets"))
    assert not (tmp_path / "datasets").exists() or not list((tmp_path / "datasets").iterdir())  # nothing written
    (tmp_path / "runs" / "smax-3m__mappo__1" / "replay" / "returns.json").unlink()  # recorded before the copy existed
    assert len(smax_recipe.replay_chunks(env, smax_recipe.replay_folder("smax-3m"))) == 2


def save_tiny_actor(folder: Path, env, level: str, seed: int) -> None:
    from envs.behavior.mappo import actor_init, save_actor

    (folder / env.env_id).mkdir(parents=True, exist_ok=True)
    params = actor_init(jax.random.key(seed), env.obs_dim, env.n_agents, env.n_actions, 16)
    params = {k: v * 30.0 for k, v in params.items()}  # large logits: a near-deterministic actor that would pick illegal actions if unmasked
    meta = dict(env_id=env.env_id, obs_dim=env.obs_dim, n_agents=env.n_agents, n_actions=env.n_actions, hidden_dim=16,
                env_step=0, win_rate=0.0, return_mean=0.0)
    save_actor(folder / env.env_id / f"{level}.npz", params, meta)


@pytest.mark.parametrize("quality", ["medium", "expert"])
def test_actor_datasets_respect_masks(env, tmp_path, quality):
    save_tiny_actor(tmp_path / "weights", env, quality, seed=7)
    recipe = dict(quality=quality, n_episodes=30, behavior_dir=str(tmp_path / "weights"))
    _, data, meta = dataset.load("smax-3m", recipe=recipe, dataset_dir=str(tmp_path / "data"))
    assert meta["fingerprint"] is not None
    for d in data.values():
        assert smax_recipe.dataset_summary(d)["episodes"] == 30
        assert d["avail_actions"][np.arange(len(d["actions"])), d["actions"]].all()
    # the actor file changes -> the dataset built from the old one is refused
    save_tiny_actor(tmp_path / "weights", env, quality, seed=8)
    with pytest.raises(InputError, match="other behaviour policies"):
        dataset.load("smax-3m", recipe=recipe, dataset_dir=str(tmp_path / "data"), build_if_missing=False)


def test_foreign_actor_is_refused(env, tmp_path):
    other = envs.make("smax-3s_vs_4z")
    save_tiny_actor(tmp_path, other, "expert", seed=0)
    (tmp_path / "smax-3m").mkdir()
    (tmp_path / "smax-3s_vs_4z" / "expert.npz").rename(tmp_path / "smax-3m" / "expert.npz")
    with pytest.raises(InputError, match="holds an actor for smax-3s_vs_4z"):
        smax_recipe.collect(env, 0, "expert", 1, 0, 0.2, str(tmp_path), "")
