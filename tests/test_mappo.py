"""The MAPPO behaviour learner of the SMAX datasets (envs/behavior/mappo.py), at tiny scale on real smax-3m.

One tiny training run (2 updates of 6 envs x 16 steps) is shared by the tests; its jitted
functions stay compiled for the resume, which runs in the same process (a compile of the
update and the evaluation takes ~20 s)."""

import json
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import InputError
from envs.behavior import mappo

TINY = dict(env_id="smax-3m", num_envs=6, num_steps=16, record_envs=6, eval_freq=96, eval_episodes=4,
            checkpoint_freq=2 * 96, hidden_dim=16)  # one replay chunk of 2 updates
STEPS_PER_UPDATE = 6 * 16
REPLAY_KEYS = ("obs", "actions", "avail", "rewards", "next_obs", "next_avail", "states", "dones", "timeouts", "won", "first")


@pytest.fixture(scope="module")
def env():
    return mappo.smax_env("smax-3m")


def tiny_args(root, **kw) -> mappo.Args:
    return mappo.Args(**{**TINY, "total_timesteps": 2 * STEPS_PER_UPDATE, "run_dir": str(root / "run"),
                         "weights_dir": str(root / "weights"), **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mappo")
    mappo.main(tiny_args(root))
    return root


def random_masks(rng, shape):
    """Random availability with at least one available action per agent."""
    avail = rng.random(shape) < 0.4
    rows = avail.reshape(-1, shape[-1])
    rows[np.arange(len(rows)), rng.integers(shape[-1], size=len(rows))] = True
    return rows.reshape(shape)


def sharp_actor(env, key):
    """An actor with large logits (its init gives logits near 0), so masking is tested where it matters."""
    params = mappo.actor_init(key, env.obs_dim, env.n_agents, env.n_actions, 32)
    return {k: v * 30 for k, v in params.items()}


def real_views(run_dir):
    """Real SMAX observations and masks from the tiny run's replay: streams j, j+1, j+2 are agents 0, 1, 2."""
    _, chunks = load_chunks(run_dir)
    obs = np.concatenate([c["obs"] for c in chunks]).reshape(-1, 3, mappo.smax_env("smax-3m").obs_dim)
    avail = np.concatenate([c["avail"] for c in chunks]).reshape(*obs.shape[:2], -1)
    return obs, avail


def test_masked_logits_give_unavailable_actions_no_probability(trained, env):
    obs, avail = real_views(trained / "run")
    assert not avail.all() and avail[..., mappo.smax.STOP].all() and avail[..., 5:].any()  # some attacks are legal
    rng = np.random.default_rng(0)
    random_obs = rng.normal(size=(2, 64, env.n_agents, env.obs_dim)).astype(np.float32) * 5
    for o, a in ((obs, avail), (random_obs, random_masks(rng, (2, 64, env.n_agents, env.n_actions)))):
        for seed in range(3):
            logits = mappo.actor_logits(sharp_actor(env, jax.random.key(seed)), o, a)
            assert logits.shape == a.shape
            probs = np.asarray(jax.nn.softmax(logits))
            assert (probs[~a] == 0).all()
            np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)


def test_the_agent_id_is_appended(env):
    """The same observation in two agent slots gives two different action distributions."""
    params = sharp_actor(env, jax.random.key(1))
    obs = jnp.broadcast_to(jnp.ones(env.obs_dim), (env.n_agents, env.obs_dim))
    logits = mappo.actor_logits(params, obs, jnp.ones((env.n_agents, env.n_actions), bool))
    assert not np.allclose(logits[0], logits[1])
    assert params["w0"].shape == (env.obs_dim + env.n_agents, 32)


def test_sampled_actions_are_legal_under_random_masks(env):
    rng = np.random.default_rng(1)
    avail = random_masks(rng, (2000, env.n_agents, env.n_actions))
    avail[:5] = False
    avail[:5, :, 6] = True  # a single legal action
    obs = rng.normal(size=(2000, env.n_agents, env.obs_dim)).astype(np.float32)
    for seed in range(3):
        actions = np.asarray(mappo.sample_actions(sharp_actor(env, jax.random.key(seed)), jax.random.key(10 + seed), obs, avail))
        assert actions.shape == (2000, env.n_agents) and actions.dtype == np.int32
        assert np.take_along_axis(avail, actions[..., None], -1).all()
        assert (actions[:5] == 6).all()


def test_actor_file_round_trip(env, tmp_path):
    params = mappo.actor_init(jax.random.key(2), env.obs_dim, env.n_agents, env.n_actions, 128)
    meta = dict(env_id="smax-3m", obs_dim=env.obs_dim, n_agents=env.n_agents, n_actions=env.n_actions, hidden_dim=128,
                env_step=5, win_rate=0.5, return_mean=12.5)
    mappo.save_actor(tmp_path / "actor.npz", params, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["actor.npz"]  # no temporary file left
    assert (tmp_path / "actor.npz").stat().st_size < 200_000
    loaded, loaded_meta = mappo.load_actor(tmp_path / "actor.npz")
    assert loaded_meta == meta and loaded.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(loaded[k], params[k])
    obs = np.random.default_rng(3).normal(size=(5, env.n_agents, env.obs_dim)).astype(np.float32)
    avail = np.ones((5, env.n_agents, env.n_actions), bool)
    np.testing.assert_array_equal(mappo.actor_logits(loaded, obs, avail), mappo.actor_logits(params, obs, avail))


def load_chunks(run_dir):
    chunks = sorted((run_dir / "replay").glob("chunk_*.npz"))
    return [p.name for p in chunks], [dict(np.load(p)) for p in chunks]


def test_a_tiny_run_writes_actors_returns_and_replay(trained, env):
    weights = trained / "weights" / "smax-3m"
    record = json.loads((weights / "returns.json").read_text())
    evaluations = record["evaluations"]
    assert [(e["env_step"], e["update"]) for e in evaluations] == [(96, 1), (192, 2)]
    assert all(0 <= e["win_rate"] <= 1 and e["seconds"] >= 0 for e in evaluations)
    best = max(evaluations, key=lambda e: (e["win_rate"], e["return_mean"]))
    assert record["expert"]["snapshot"] == best["snapshot"]
    assert record["medium"] in evaluations
    for level in mappo.LEVELS:
        params, meta = mappo.load_actor(weights / f"{level}.npz")
        assert meta["level"] == level and meta["update"] == record[level]["update"]
        assert {k: meta[k] for k in ("env_id", "obs_dim", "n_agents", "n_actions", "hidden_dim")} == dict(
            env_id="smax-3m", obs_dim=env.obs_dim, n_agents=3, n_actions=env.n_actions, hidden_dim=16)
        assert meta["env_step"] == record[level]["env_step"] and meta["win_rate"] == record[level]["win_rate"]
        assert "return_mean" in meta and meta["versions"]["jaxmarl"]
        snapshot, _ = mappo.load_actor(trained / "run" / "snapshots" / record[level]["snapshot"])
        for k in params:
            np.testing.assert_array_equal(params[k], snapshot[k])

    streams = json.loads((trained / "run" / "replay" / "streams.json").read_text())
    assert streams["agent_of_stream"] == [0, 1, 2, 0, 1, 2]
    assert json.loads((trained / "run" / "replay" / "returns.json").read_text()) == record  # whether this replay's run learned
    names, chunks = load_chunks(trained / "run")
    assert names == ["chunk_000001.npz"]  # updates 1 and 2, written with the checkpoint
    shapes = dict(obs=(32, 6, env.obs_dim), actions=(32, 6), avail=(32, 6, env.n_actions), rewards=(32, 6),
                  next_obs=(32, 6, env.obs_dim), next_avail=(32, 6, env.n_actions), states=(32, 6, env.state_dim),
                  dones=(32, 6), timeouts=(32, 6), won=(32, 6), first=(32, 6))
    dtypes = dict(obs=np.float32, actions=np.int64, rewards=np.float32, next_obs=np.float32, states=np.float32)
    for chunk in chunks:
        assert sorted(chunk) == sorted(REPLAY_KEYS)
        for k in REPLAY_KEYS:
            assert chunk[k].shape == shapes[k], k
            assert chunk[k].dtype == dtypes.get(k, bool), k
        assert np.take_along_axis(chunk["avail"], chunk["actions"][..., None], -1).all()
        assert not (chunk["dones"] & chunk["timeouts"]).any() and not (chunk["won"] & ~chunk["dones"]).any()
    assert chunks[0]["first"][0].all()
    # the streams chain: an episode goes on unless it ended, and the next step starts one exactly then
    steps = {k: np.concatenate([c[k] for c in chunks]) for k in REPLAY_KEYS}
    ended = steps["dones"] | steps["timeouts"]
    np.testing.assert_array_equal(steps["first"][1:], ended[:-1])
    going_on = ~ended[:-1]
    np.testing.assert_array_equal(steps["next_obs"][:-1][going_on], steps["obs"][1:][going_on])
    np.testing.assert_array_equal(steps["next_avail"][:-1][going_on], steps["avail"][1:][going_on])
    assert ended.any() and not steps["first"][1:].all()
    assert (steps["rewards"] >= 0).all() and (steps["rewards"][~ended] <= 10).all()


def test_resume_continues_the_run_and_a_fresh_start_is_refused(trained, tmp_path):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    run = tmp_path / "run"
    with pytest.raises(InputError, match="pass --resume to continue it or --overwrite"):
        mappo.main(tiny_args(tmp_path, total_timesteps=4 * STEPS_PER_UPDATE))
    with pytest.raises(InputError, match="was run with other --hidden-dim"):
        mappo.main(tiny_args(tmp_path, total_timesteps=4 * STEPS_PER_UPDATE, hidden_dim=32, resume=True))
    (run / "checkpoint.pkl").unlink()
    with pytest.raises(InputError, match="pass --resume to continue it or --overwrite"):  # the actors alone are a run too
        mappo.main(tiny_args(tmp_path))
    shutil.copy(trained / "run" / "checkpoint.pkl", run / "checkpoint.pkl")
    with open(run / "checkpoint.pkl", "rb") as f:
        before = pickle.load(f)
    shutil.copy(run / "replay" / "chunk_000001.npz", run / "replay" / "chunk_000003.npz")  # written after the checkpoint
    shutil.copy(run / "snapshots" / "update_000002.npz", run / "snapshots" / "update_000005.npz")

    mappo.main(tiny_args(tmp_path, total_timesteps=3 * STEPS_PER_UPDATE, resume=True))
    with open(run / "checkpoint.pkl", "rb") as f:
        after = pickle.load(f)
    assert before["update"] == 2 and after["update"] == 3
    n_steps = mappo.Args().update_epochs * mappo.Args().num_minibatches
    assert after["train"]["actor_opt"][1].count == 3 * n_steps  # the optimiser went on from the checkpoint
    assert not np.array_equal(after["train"]["actor"]["w0"], before["train"]["actor"]["w0"])
    record = json.loads((tmp_path / "weights" / "smax-3m" / "returns.json").read_text())
    assert [e["update"] for e in record["evaluations"]] == [1, 2, 3]
    names, chunks = load_chunks(run)
    assert names == ["chunk_000001.npz", "chunk_000003.npz"]
    assert chunks[1]["obs"].shape[0] == 16 and chunks[1]["first"][0].all()  # update 3 alone, fresh episodes after a resume
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [f"update_00000{n}.npz" for n in (1, 2, 3)]
