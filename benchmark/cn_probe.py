"""What a trained cooperative-navigation team of matd3bc.py does: its actions set against the data's and the landmarks.

    python benchmark/cn_probe.py runs/grid/fig1d/cn__MATD3+BC__s1 runs/grid/fig1d/cn__TD3+BC__s1
    python benchmark/cn_probe.py runs/grid/fig1d/cn__*__s* --out probe.json

On `cn` the datasets are uniform random play: the mean action in every state is 0 (stand still), so TD3+BC's
behaviour-cloning term pulls each actor towards a = 0, and the Q term, scaled by alpha / mean|Q|, is what moves
it off. This script takes a run's final state (`checkpoint.pt`) and asks how far it moved:

| team | action of agent i |
|---|---|
| trained | pi_i(o_i): the run's own evaluation (same episodes) |
| trained x k | clip(k pi_i(o_i), -1, 1), k = 4, 16: the same directions, pushed harder |
| stand still | a_i = 0: the data's mean action |

and, on observations of the agents' own data, the actors' mean |a| per component (uniform play: 0.5) and the
mean cosine between pi_i(o_i) and the direction from agent i to its nearest landmark (1: straight to it, 0: no
relation). With `--episodes` equal to the run's `--eval-episodes` (the default) the episodes are the run's last
evaluation's, and the trained team reproduces its final return exactly (printed as a check). Scripted teams to
read these against: `python benchmark/cn_references.py`. Evaluation only, one torch thread, seconds per run.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmark/...`
import envs  # noqa: E402
import matd3bc as M  # noqa: E402
from envs import dataset as D  # noqa: E402
from envs import run as contract  # noqa: E402
from benchmark.bcq_probe import write_json  # noqa: E402
from envs import InputError  # noqa: E402
from envs import dataset as datasets  # noqa: E402

SCALES = (4, 16)
TEAMS = ("trained", *(f"trained x {k}" for k in SCALES), "stand still")


def load_run(run_dir: Path):
    """(args, step, the modules' state dicts) of a matd3bc.py cn run's last checkpoint, or a one-line InputError."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{run_dir}: no checkpoint.pt; give the folder of a matd3bc.py run (runs/<run_name>)")
    ckpt = contract.load_torch(path, "checkpoint")  # a truncated or foreign file: one line, as the script's own --resume
    if ckpt.get("script") != M.SCRIPT:
        raise InputError(f"{run_dir}: a {ckpt.get('script')} run, not a matd3bc.py one")
    args = M.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["args"].items()})
    if args.env_id != "cn":
        raise InputError(f"{run_dir}: a run on {args.env_id}; this probe reads cooperative navigation (cn) runs only")
    return args, ckpt["step"], ckpt["modules"]


def nearest_landmark_cosine(obs: np.ndarray, act: np.ndarray) -> float:
    """Mean cosine between actions and the direction to the nearest landmark: obs [states, 24] as envs/cn.py lays it
    out (landmarks relative to the agent at 4:12), act [states, 2]; a zero action counts as cosine 0."""
    rel = obs[:, 4:12].reshape(-1, 4, 2)
    target = rel[np.arange(len(obs)), np.linalg.norm(rel, axis=-1).argmin(1)]
    norms = np.linalg.norm(target, axis=-1) * np.linalg.norm(act, axis=-1)
    cos = np.divide((target * act).sum(-1), norms, out=np.zeros(len(obs)), where=norms > 0)
    return float(cos.mean())


@torch.no_grad()
def probe(run_dir: Path, episodes: int | None, states: int) -> dict:
    args, step, modules = load_run(run_dir)
    env = envs.make("cn")
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
    agent_ids = list(range(n_agents))
    recipe = {"n_transitions": args.n_transitions}
    _, agent_data, _ = datasets.load(args.env_id, {"partition": args.partition}, recipe, args.dataset_dir, agent_ids)
    data = D.stack_agents([agent_data[i] for i in agent_ids], ("obs", "actions", "rewards", "next_obs", "dones"), "cpu", normalize_obs=args.normalize_obs)
    generators = D.agent_generators(args.seed, agent_ids, "cpu")
    actor = M.Actor(obs_dim, act_dim, args.hidden_dim, generators, "cpu")
    critic = M.TwinCritic(obs_dim, act_dim, args.hidden_dim, generators, "cpu")
    actor.load_state_dict(modules["actor"])
    critic.load_state_dict(modules["critic"])

    seed = args.seed + step  # the run's last evaluation's episodes
    episodes = args.eval_episodes if episodes is None else episodes
    policies = {"trained": actor, "stand still": lambda obs: torch.zeros(*obs.shape[:2], act_dim)}
    for k in SCALES:
        policies[f"trained x {k}"] = lambda obs, k=k: (k * actor(obs)).clamp(-1, 1)
    out = dict(run_dir=str(run_dir), algorithm=M.algorithm(args)[0], seed=args.seed, step=step, episodes=episodes,
               env_seed=seed, teams={})
    for name in TEAMS:
        r = M.evaluate(env, policies[name], critic, data["obs_mean"], data["obs_std"], episodes, args.gamma, seed, "cpu")
        out["teams"][name] = {k: r[k] for k in ("team_return", "team_return_std")}

    rng = np.random.default_rng(0)
    idx = torch.stack([torch.as_tensor(rng.integers(0, int(s), states)) for s in data["size"]])
    obs = D.gather(data["obs"], idx)  # normalised, as the actor sees them
    raw = obs * data["obs_std"] + data["obs_mean"]
    act = actor(obs)
    out["mean_abs_action"] = act.abs().mean().item()
    out["data_mean_abs_action"] = D.gather(data["actions"], idx).abs().mean().item()
    out["nearest_landmark_cosine"] = [nearest_landmark_cosine(raw[i].numpy(), act[i].numpy()) for i in agent_ids]
    results = run_dir / "results.json"
    if results.is_file():
        final = json.loads(results.read_text()).get("final") or {}
        if final.get("step") == step and "team_return" in final:
            out["run_final_return"] = final["team_return"]
    return out


def table(probes: list[dict]) -> list[str]:
    rows = ["| run | " + " | ".join(TEAMS) + " | mean abs action (data) | cosine to the nearest landmark |",
            "|---" * (len(TEAMS) + 3) + "|"]
    for p in probes:
        cells = [f"{p['teams'][t]['team_return']:.1f} ± {p['teams'][t]['team_return_std']:.1f}" for t in TEAMS]
        rows.append(f"| {Path(p['run_dir']).name} | " + " | ".join(cells)
                    + f" | {p['mean_abs_action']:.3f} ({p['data_mean_abs_action']:.3f}) | {np.mean(p['nearest_landmark_cosine']):.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders of matd3bc.py runs on cn")
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes per team (default: the run's --eval-episodes)")
    parser.add_argument("--states", type=int, default=10_000, help="states per agent for the action statistics")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    a = parser.parse_args()
    if (a.episodes is not None and a.episodes < 1) or a.states < 1:
        raise InputError(f"--episodes and --states must be >= 1, got {a.episodes} and {a.states}")
    torch.set_num_threads(1)
    probes = []
    for run_dir in a.runs:  # a bad folder exits with one line (InputError is a SystemExit)
        p = probe(run_dir, a.episodes, a.states)
        probes.append(p)
        check = f" (the run's own final evaluation: {p['run_final_return']:.2f})" if "run_final_return" in p else ""
        print(f"{run_dir}: {p['algorithm']}, step {p['step']}, {p['episodes']} episodes from seed {p['env_seed']}, "
              f"trained team {p['teams']['trained']['team_return']:.2f}{check}", file=sys.stderr)
    print("team return, mean ± std over episodes\n")
    print("\n".join(table(probes)))
    if a.out:
        write_json(a.out, probes)


if __name__ == "__main__":
    main()
