"""What BCQ's acting rule adds to G1: a trained BCQ-row team of mabcq_continuous.py, re-evaluated with parts of the rule.

    python benchmark/bcq_probe.py runs/grid/table5/halfcheetah-2x3__BCQ__s1 --episodes 30
    python benchmark/bcq_probe.py runs/grid/table5/halfcheetah-2x3__*__s1 --episodes 30 --out probe.json

BCQ acts with the best of n actions sampled from G1 and perturbed by xi, "best" by the critic's Q1
(`bcq_policy`). Table 5's Behavior row acts with G1's decoder at z = 0. This script takes a run's final
state (`checkpoint.pt`: G1, xi, the critics) and evaluates the same team with each part switched on in turn:

| variant | action of agent i |
|---|---|
| trained rule | `team_policy`: best-of-n perturbed samples, the run's own evaluation (same noise stream) |
| G1 mode | D1(s, z = 0): what the Behavior row of the same seed does (the rows share G1) |
| G1 mode + xi | xi(s, D1(s, 0)) |
| one G1 sample | D1(s, z), z ~ N(0, I) clipped: BCQ's proposal without the critic and xi |
| best of n G1 samples by Q1, no xi | the critic's choice among n unperturbed samples |

The episodes start from the run's last evaluation's seed; with `--episodes` equal to the run's `--eval-episodes`
they are that evaluation's episodes: the trained rule then reproduces its final score exactly (printed as a check), and
G1 mode equals the Behavior row of the same seed. It also prints how far xi moves G1's samples on states of
the agents' own data, as a share of the bound Phi (1 = at the bound), and how much G1's n samples for one
state differ from each other (`g1_stats`: if their spread is far below Phi, the critic's best of n is nearly one
sample, and the encoder's means near 0 say why: the latent carries nothing). Evaluation only, one torch thread.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmark/...`
import envs  # noqa: E402
import mabcq_continuous as M  # noqa: E402
from envs import dataset as D  # noqa: E402
from envs import InputError  # noqa: E402
from envs import dataset as datasets  # noqa: E402

VARIANTS = ("trained rule", "G1 mode", "G1 mode + xi", "one G1 sample", "best of n G1 samples by Q1, no xi")


class NoPerturbation(torch.nn.Module):
    def forward(self, obs, act):
        return act


def load_run(run_dir: Path):
    """(args, step, modules' state dicts, lambda_tn or None) of a finished or interrupted BCQ-row run, or a one-line
    InputError. lambda_tn is the run's own, as it trained with it (capped at --tn-max)."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"{run_dir}: no checkpoint.pt; give the folder of a mabcq_continuous.py run (runs/<run_name>)")
    ckpt = torch.load(path, weights_only=False, map_location="cpu")
    if ckpt.get("script") != M.SCRIPT:
        raise InputError(f"{run_dir}: a {ckpt.get('script')} run, not a mabcq_continuous.py one")
    args = M.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["args"].items()})
    if args.ddpg or args.behavior:
        raise InputError(f"{run_dir}: a {M.algorithm(args)[0]} run has no BCQ acting rule; give a MABCQ or BCQ-row run")
    return args, ckpt["step"], ckpt["modules"], ckpt.get("lambda_tn")


def load_team(run_dir: Path):
    """A BCQ-row run's trained team on CPU: (args, step, env, the agents' datasets as loaded, the stacked data,
    G1, the networks, the target networks, lambda_tn or None), every module with the run's last checkpoint's weights."""
    args, step, modules, lambda_tn = load_run(run_dir)
    env = envs.make(args.env_id, eval_episode_len=args.eval_episode_len)
    n_agents, obs_dim, act_dim = env.n_agents, env.obs_dims[0], env.act_dims[0]
    agent_ids = list(range(n_agents))
    recipe = {"n_transitions": args.n_transitions, "episode_len": args.episode_len, "behavior_dir": args.behavior_dir}
    _, agent_data, _ = datasets.load(args.env_id, envs.resolve(args.env_id, {})[0], recipe, args.dataset_dir, agent_ids)
    data = D.stack_agents([agent_data[i] for i in agent_ids], ("obs", "actions", "rewards", "next_obs", "dones"), "cpu", normalize_obs=args.normalize_obs)
    generators = D.agent_generators(args.seed, agent_ids, "cpu")
    g1, _ = M.make_generative_models(args, obs_dim, act_dim, generators, "cpu")
    nets = M.make_networks(args, obs_dim, act_dim, generators, "cpu")
    targets = M.make_networks(args, obs_dim, act_dim, generators, "cpu")
    g1.load_state_dict(modules["g1"])
    for k in nets:
        nets[k].load_state_dict(modules[k])
        targets[k].load_state_dict(modules[f"{k}_target"])
    return args, step, env, agent_data, data, g1, nets, targets, lambda_tn


@torch.no_grad()
def probe(run_dir: Path, episodes: int | None, shift_states: int) -> dict:
    args, step, env, _, data, g1, nets, _, _ = load_team(run_dir)
    xi, critic = nets["xi"], nets["critic"]

    seed = args.seed + step  # the run's last evaluation: its policy stream and episodes
    episodes = args.eval_episodes if episodes is None else episodes
    n = args.act_samples
    stream = torch.Generator().manual_seed(seed + 1)  # the sampled variants' own noise

    def noise(obs, k):
        return torch.randn(obs.shape[0], obs.shape[1] * k, args.vae_latent_dim, generator=stream)

    policies = {
        "trained rule": M.team_policy(args, nets, g1, seed, "cpu"),
        "G1 mode": lambda obs: g1.decode(obs),
        "G1 mode + xi": lambda obs: xi(obs, g1.decode(obs)),
        "one G1 sample": lambda obs: g1.decode(obs, noise(obs, 1)),
        "best of n G1 samples by Q1, no xi": lambda obs: M.bcq_policy(obs, g1, NoPerturbation(), critic, noise(obs, n)),
    }
    out = dict(run_dir=str(run_dir), algorithm=M.algorithm(args)[0], env_id=args.env_id, seed=args.seed, step=step,
               episodes=episodes, env_seed=seed, n=n, phi=args.phi, variants={})
    for name in VARIANTS:
        r = M.evaluate(env, policies[name], critic, data["obs_mean"], data["obs_std"], episodes, args.gamma, args.lmbda, seed, "cpu")
        out["variants"][name] = {k: r[k] for k in ("normalized_score", "normalized_score_std", "team_return", "team_return_std")}

    rng = np.random.default_rng(0)
    idx = torch.stack([torch.as_tensor(rng.integers(0, int(s), shift_states)) for s in data["size"]])
    obs = D.gather(data["obs"], idx)
    sampled = g1.decode(obs, noise(obs, 1))
    shift = (xi(obs, sampled) - sampled) / args.phi  # [n_agents, states, act_dim], in [-1, 1] (less at the action bounds)
    out["xi_shift"] = dict(mean_abs=shift.abs().mean().item(), share_at_bound=(shift.abs() >= 0.9).float().mean().item(),
                           mean_signed=shift.mean(1).tolist())
    out["g1"] = g1_stats(g1, obs, D.gather(data["actions"], idx), torch.stack([noise(obs, 1) for _ in range(n)]))
    results = run_dir / "results.json"
    if results.is_file():
        final = json.loads(results.read_text()).get("final") or {}
        if final.get("step") == step and "normalized_score" in final:
            out["run_final_score"] = final["normalized_score"]
    return out


@torch.no_grad()
def g1_stats(g1, obs, act, noise) -> dict:
    """How much G1's samples differ, on states of the agents' own data: obs, act [n_agents, states, *], noise
    [n, n_agents, states, latent]. `spread`: the std over the n samples of each decoded action (population std),
    averaged over states, joints and agents, in action units ([-1, 1]); `mu_sq_median`: the median over states of
    ||mu1(s, a)||^2 (0 when the encoder has collapsed onto the prior), averaged over agents."""
    samples = torch.stack([g1.decode(obs, z) for z in noise])  # [n, n_agents, states, act_dim]
    mu, _ = g1.encode(obs, act)
    return dict(spread=samples.std(0, correction=0).mean().item(), mu_sq_median=(mu**2).sum(-1).median(-1).values.mean().item())


def table(probes: list[dict]) -> list[str]:
    rows = ["| run | " + " | ".join(VARIANTS) + " | xi shift / Phi (share ≥ 0.9) | spread of n G1 samples / Phi | median ‖mu1‖² |",
            "|---" * (len(VARIANTS) + 4) + "|"]
    for p in probes:
        cells = [f"{p['variants'][v]['normalized_score']:.1f} ± {p['variants'][v]['normalized_score_std']:.1f}" for v in VARIANTS]
        shift = f"{p['xi_shift']['mean_abs']:.2f} ({p['xi_shift']['share_at_bound']:.2f})"
        g1 = f"{p['g1']['spread'] / p['phi']:.2f} | {p['g1']['mu_sq_median']:.4f}"
        rows.append(f"| {Path(p['run_dir']).name} | " + " | ".join(cells) + f" | {shift} | {g1} |")
    return rows


def write_json(path: Path, obj) -> None:
    """Write obj to path as JSON through a temporary name, so no half-written file is ever left."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders of MABCQ / BCQ-row runs of mabcq_continuous.py")
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes per variant (default: the run's --eval-episodes)")
    parser.add_argument("--shift-states", type=int, default=5000, help="states per agent for the xi shift")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    a = parser.parse_args()
    torch.set_num_threads(1)
    probes = []
    for run_dir in a.runs:  # a bad folder exits with one line (InputError is a SystemExit)
        p = probe(run_dir, a.episodes, a.shift_states)
        probes.append(p)
        check = f" (the run's own final evaluation: {p['run_final_score']:.1f})" if "run_final_score" in p else ""
        print(f"{run_dir}: {p['algorithm']}, step {p['step']}, {p['episodes']} episodes from seed {p['env_seed']}{check}",
              file=sys.stderr)
    print(f"D4RL-normalised score, mean ± std over episodes; n = {probes[0]['n']}\n")
    print("\n".join(table(probes)))
    if a.out:
        write_json(a.out, probes)


if __name__ == "__main__":
    main()
