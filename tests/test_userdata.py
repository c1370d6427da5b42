"""A user's own per-agent data, `data:<folder>` (envs/userdata.py, docs/own-data.md): tiny folders written here with
numpy, checked, copied into the dataset dir and trained on; the refusals; the evaluation envs meta.json can name."""

import hashlib
import json

import numpy as np
import pytest

import conftest
import envs
from envs import InputError, dataset


def write_folder(folder, n_agents=2, n=120, obs_dim=5, act_dim=2, discrete=False, states=False, seed=0, **meta):
    """`n_agents` files of `n` jointly logged rows (episodes of 40 steps cut by a time limit, the last one terminal)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    dones, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    timeouts[39::40], dones[-1], timeouts[-1] = True, True, False
    rewards = rng.normal(size=n).astype(np.float32)
    state = rng.normal(size=(n + 1, 7)).astype(np.float32)
    for i in range(n_agents):
        obs = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
        arrays = dict(obs=obs[:-1], next_obs=obs[1:], rewards=rewards, dones=dones, timeouts=timeouts)
        if discrete:
            avail = rng.random((n + 1, act_dim)) < 0.7
            avail[:, 0] = True
            arrays.update(actions=np.zeros(n, np.int64), avail_actions=avail[:-1], next_avail_actions=avail[1:])
        else:
            arrays["actions"] = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
        if states:
            arrays["states"] = state[:-1]
        np.savez(folder / f"agent_{i}.npz", **arrays)
    (folder / "meta.json").write_text(json.dumps(dict(n_agents=n_agents, discrete=discrete, **meta)))
    return folder


def fingerprint(folder) -> dict:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def edit(file, **changes):
    arrays = dict(np.load(file))
    arrays.update(changes)
    np.savez(file, **{k: v for k, v in arrays.items() if v is not None})


SCRIPT_FLAGS = {"matd3bc.py": ["--analysis-states", "20"], "mabcq_continuous.py": ["--analysis-states", "20", "--epsilon", "0.5"],
                "macql.py": [], "mabcq_discrete.py": []}


@pytest.mark.parametrize("script", SCRIPT_FLAGS)
def test_every_script_trains_on_a_folder_without_evaluation_env_and_leaves_it_as_it_was(tmp_path, script):
    discrete = script in ("macql.py", "mabcq_discrete.py")
    folder = write_folder(tmp_path / "logs", aligned=True, discrete=discrete, act_dim=4 if discrete else 2)
    before = fingerprint(folder)
    flags = ["--env-id", "data:logs", "--total-steps", "20", "--eval-freq", "10", "--vae-steps", "5", "--hidden-dim", "16",
             "--batch-size", "16", "--exp-name", "own", *SCRIPT_FLAGS[script]]
    proc = conftest.run_script(script, tmp_path, *flags)
    assert proc.stdout.count("data:logs: no evaluation env") == 1
    res, _ = conftest.find_run(tmp_path, "own")
    assert res["status"] == "complete" and res["agent_ids"] == [0, 1] and len(res["evaluations"]) == 2
    final = res["final"]
    assert "team_return" not in final and "normalized_score" not in final  # no evaluation env: nothing evaluated
    assert all(np.isfinite(final[k]) for k in ("value_difference", "q_values", "td_loss", "lambda_tn_mean", "lambda_vd_mean"))
    assert len(res["dataset"]["recipe"]["data_sha256"]) == 16 and res["dataset"]["path"].startswith(str(tmp_path / "datasets"))
    assert fingerprint(folder) == before  # only read


def test_the_copy_holds_the_files_arrays_and_follows_their_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_folder(tmp_path / "logs", aligned=True)
    env, data, meta = dataset.load("data:logs", dataset_dir="d")
    assert (env.n_agents, env.obs_dims, env.act_dims, env.evaluates, meta["n_transitions"]) == (2, [5, 5], [2, 2], False, [120] * 2)
    for i in range(2):
        with np.load(folder / f"agent_{i}.npz") as npz:
            for key in npz.files:
                np.testing.assert_array_equal(data[i][key], npz[key])
        np.testing.assert_array_equal(data[i]["states"][:, 0], np.arange(120))  # aligned without states: the row number
    assert meta["summary"][0] == dict(transitions=120, episodes=3, terminated=1, return_mean=meta["summary"][0]["return_mean"],
                                      return_std=meta["summary"][0]["return_std"])
    views = env.observe(np.array([[5.0], [80.0]], np.float32))  # row k is one moment of every agent
    for i in range(2):
        np.testing.assert_array_equal(views[i], data[i]["obs"][[5, 80]])
    assert dataset.load("data:logs", dataset_dir="d")[2]["path"] == meta["path"]  # checked, not rebuilt
    edit(folder / "agent_1.npz", rewards=np.ones(120, np.float32))  # edited data: a new copy, the old one stays
    _, data2, meta2 = dataset.load("data:logs", dataset_dir="d")
    assert meta2["path"] != meta["path"] and data2[1]["rewards"].sum() == 120


def test_states_give_each_agent_its_view_of_every_logged_state(tmp_path, monkeypatch):
    """Unaligned files whose agents logged the same states in another order: agent i's view of a state is its obs on
    the row where it logged it; an agent observing the state itself views it as it is."""
    monkeypatch.chdir(tmp_path)
    folder = write_folder(tmp_path / "s", states=True)
    with np.load(folder / "agent_1.npz") as npz:
        edit(folder / "agent_1.npz", **{k: npz[k][::-1].copy() for k in npz.files})  # agent 1's rows in reverse
    states = np.load(folder / "agent_0.npz")["states"]
    edit(folder / "agent_0.npz", obs=states, next_obs=np.roll(states, -1, 0))  # agent 0 observes the state (7 numbers)
    env, data, _ = dataset.load("data:s", dataset_dir="d")
    assert env.obs_dims == [7, 5] and env.state_dim == 7
    views = env.observe(data[0]["states"][[3, 50]])
    np.testing.assert_array_equal(views[0], data[0]["states"][[3, 50]])
    np.testing.assert_array_equal(views[1], data[1]["obs"][[116, 69]])  # reversed rows
    edit(folder / "agent_1.npz", states=np.load(folder / "agent_1.npz")["states"] + 1)  # states agent 0 never logged
    with pytest.raises(InputError, match="agent_1.npz has no row with the state of agent_0.npz's row 0: the value difference"):
        dataset.load("data:s", dataset_dir="d")


@pytest.mark.parametrize("case, message", [
    ("no meta.json", "data:f: no meta.json in f; write one, e.g. {\"n_agents\": 2, \"discrete\": false}"),
    ("wrong dtype", "f/agent_1.npz: `obs` is float64, expected float32: save it as float32 \\(obs.astype\\(np.float32\\)\\)"),
    ("agent file missing", "f lacks agent_1.npz; meta.json's n_agents 2 means agent_0.npz .. agent_1.npz"),
    ("NaN", "f/agent_0.npz: `next_obs` holds NaN or inf; fix the file"),
    ("array missing", "f/agent_0.npz lacks timeouts; an agent file of continuous actions holds obs, next_obs"),
    ("unknown key", "f/meta.json: unknown keys \\['evalenv'\\]; meta.json takes n_agents, discrete"),
    ("not aligned", "aligned is true, but agent_1.npz's `dones` differ from agent_0.npz's"),
    ("actions out of range", "f/agent_0.npz: actions outside the action range \\[-1, 1\\]"),
    ("eval env of other agents", "eval_env MaMuJoCo HalfCheetah 2x3 has 2 agents acting on \\[3, 3\\] joints, the data 2 "
                                 "agents with actions \\[2, 2\\]"),
    ("climbs out", "data:a/../../f: the path climbs out of its own name with `..`"),
])
def test_bad_folders_are_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, case, message):
    monkeypatch.chdir(tmp_path)
    folder = write_folder(tmp_path / "f", aligned=True)
    env_id = "data:f"
    if case == "no meta.json":
        (folder / "meta.json").unlink()
    elif case == "wrong dtype":
        edit(folder / "agent_1.npz", obs=np.load(folder / "agent_1.npz")["obs"].astype(np.float64))
    elif case == "agent file missing":
        (folder / "agent_1.npz").unlink()
    elif case == "NaN":
        next_obs = np.load(folder / "agent_0.npz")["next_obs"]
        next_obs[7, 2] = np.nan
        edit(folder / "agent_0.npz", next_obs=next_obs)
    elif case == "array missing":
        edit(folder / "agent_0.npz", timeouts=None)
    elif case == "unknown key":
        (folder / "meta.json").write_text(json.dumps(dict(n_agents=2, discrete=False, evalenv=None)))
    elif case == "not aligned":
        dones = np.zeros(120, bool)
        dones[10] = True
        edit(folder / "agent_1.npz", dones=dones)
    elif case == "actions out of range":
        edit(folder / "agent_0.npz", actions=np.load(folder / "agent_0.npz")["actions"] * 2)
    elif case == "eval env of other agents":
        meta = dict(n_agents=2, discrete=False, eval_env=dict(type="mamujoco", robot="HalfCheetah", agent_conf="2x3"))
        (folder / "meta.json").write_text(json.dumps(meta))
    elif case == "climbs out":
        env_id = "data:a/../../f"
    before = fingerprint(folder)
    with pytest.raises(InputError, match=message) as e:
        dataset.load(env_id, dataset_dir="d")
    assert "\n" not in str(e.value) and not (tmp_path / "d").exists() and fingerprint(folder) == before


def test_matd3bc_refuses_data_without_common_states_in_one_line(tmp_path):
    write_folder(tmp_path / "apart")  # separately logged (not aligned), no states: no value difference
    proc = conftest.run_script("matd3bc.py", tmp_path, "--env-id", "data:apart", check=False)
    assert conftest.one_line_error(proc) == (
        "error: data:apart: its agents share no states, so matd3bc.py cannot measure the value difference; give every agent "
        "file `states`, or set aligned in meta.json if its rows line up (docs/own-data.md)")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "datasets").exists()


def test_discrete_folder_loads_with_its_action_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_folder(tmp_path / "q", n_agents=3, obs_dim=4, act_dim=6, discrete=True, aligned=True)
    env, data, meta = dataset.load("data:q", dataset_dir="d")
    assert (env.discrete, env.n_agents, env.act_dims, env.obs_dims) == (True, 3, [6] * 3, [4] * 3)
    for i in range(3):
        with np.load(folder / f"agent_{i}.npz") as npz:
            np.testing.assert_array_equal(data[i]["avail_actions"], npz["avail_actions"])
            assert data[i]["actions"].dtype == np.int64
    edit(folder / "agent_2.npz", actions=np.full(120, 9, np.int64))
    with pytest.raises(InputError, match="q/agent_2.npz: actions outside \\[0, 6\\); fix the file"):
        dataset.load("data:q", dataset_dir="d")
    edit(folder / "agent_2.npz", actions=np.zeros(120, np.int32))
    with pytest.raises(InputError, match="`actions` is int32, expected int64: save it as int64"):
        dataset.load("data:q", dataset_dir="d")


@pytest.mark.filterwarnings("ignore:The old environment creation API:DeprecationWarning")  # mpe2's own import path
def test_evaluation_envs_meta_json_can_name(tmp_path, monkeypatch):
    """MaMuJoCo (D4RL-normalised HalfCheetah) and a PettingZoo parallel env (mpe2's simple_spread, continuous: the
    actions in [-1, 1] go onto its Box(0, 1)), evaluated by matd3bc's own `evaluate`; a discrete PettingZoo env steps."""
    import torch

    import matd3bc

    monkeypatch.chdir(tmp_path)
    cheetah = dict(type="mamujoco", robot="HalfCheetah", agent_conf="2x3", agent_obsk=1, episode_len=20)
    spread = dict(type="pettingzoo", make="mpe2.simple_spread_v3:parallel_env", episode_len=10,
                  kwargs=dict(N=2, continuous_actions=True, max_cycles=10))
    write_folder(tmp_path / "cheetah", obs_dim=12, act_dim=3, aligned=True, eval_env=cheetah)
    write_folder(tmp_path / "spread", obs_dim=12, act_dim=5, aligned=True, eval_env=spread)
    for name in ("cheetah", "spread"):
        env = envs.make(f"data:{name}")
        act_dim = env.act_dims[0]
        generators = dataset.agent_generators(0, [0, 1], "cpu")
        actor, critic = matd3bc.Actor(12, act_dim, 8, generators), matd3bc.TwinCritic(12, act_dim, 8, generators)
        out = matd3bc.evaluate(env, actor, critic, torch.zeros(2, 1, 12), torch.ones(2, 1, 12), 2, 0.99, 0, "cpu")
        assert np.isfinite(out["team_return"]) and ("normalized_score" in out) == (name == "cheetah")
    spread_env = envs.make("data:spread").evaluator
    np.testing.assert_allclose(spread_env._action(0, np.array([-1, 0, 1, 0.5, -0.5])), [0, 0.5, 1, 0.75, 0.25])
    rps = dict(type="pettingzoo", make="pettingzoo.classic.rps_v2:parallel_env", kwargs=dict(max_cycles=3))
    write_folder(tmp_path / "rps", obs_dim=4, act_dim=3, discrete=True, aligned=True, eval_env=rps)
    env = envs.make("data:rps")
    obs = env.reset(2, np.random.default_rng(0))
    assert [o.shape for o in obs] == [(2, 4)] * 2 and [m.shape for m in env.avail_actions()] == [(2, 3)] * 2
    terminated = [env.step([np.array([0, 1]), np.array([2, 2])])[2] for _ in range(3)]
    assert [t.tolist() for t in terminated] == [[False, False], [False, False], [True, True]]
