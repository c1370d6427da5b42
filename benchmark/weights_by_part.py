"""What MABCQ's weights do to each part of the Appendix-B mixture: a trained run of mabcq_continuous.py,
its lambda_vd and lambda_tn on the agents' own transitions, part by part.

    python benchmark/weights_by_part.py runs/grid/table5/ant-2x4__MABCQ__s1
    python benchmark/weights_by_part.py runs/grid/table5/ant-2x4__*__s1 --per-part 20000 --out weights.json

The paper's argument (Section 4): agent i's data were collected while the other agents played
policies that differ from the ones they will play, so the transition P_B(s'|s, a_i) agent i sees is
biased, and lambda_vd (optimism about the next state's value) and lambda_tn (~ 1 / P_B(s'|s, a_i))
re-weight its TD targets towards the transitions good teammates would produce. Our datasets say,
per transition, which MIXTURE part made it (`mixture_part`): early (every agent early), own
intermediate + others expert, own expert + others intermediate, all expert. If the weights do what
the paper says, the parts where the others played expert should get weights above those where the
others played intermediate.

For each agent and part, on `--per-part` transitions drawn at random from that part (fixed seed), this
prints the mean lambda_vd as the run trains with it (clipped to [1 - eps, 1 + eps], from the target networks
at the run's last checkpoint, exactly `value_deviation`; terminal transitions have 1) and its mean distance
from 1, the share of unclipped lambda_vd inside the paper's [0.2, 1.4], the share clipped, the mean lambda_tn
(the run's own, as it trained with it: from its checkpoint, capped at --tn-max) and the mean product. Runs
without lambda_vd (`--no-vd`) still get lambda_vd from their own critics (what it would be), and runs without
lambda_tn show 1. Evaluation only, one torch thread; about 40 s per Ant run at the default --per-part.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmark/...`
import mabcq_continuous as M  # noqa: E402
from envs import InputError  # noqa: E402
from benchmark.bcq_probe import load_team, write_json  # noqa: E402
from envs.recipes.mamujoco import MIXTURE  # noqa: E402

PARTS = [f"own {own} + others {others}" if own != others else f"all {own}" for _, own, others in MIXTURE]


@torch.no_grad()
def weights_by_part(run_dir: Path, per_part: int) -> dict:
    args, step, env, agent_data, data, g1, _, targets, lambda_tn = load_team(run_dir)
    if "mixture_part" not in agent_data[0]:
        raise InputError(f"{run_dir}: {args.env_id}'s data have no Appendix-B mixture parts; give a multi-agent MuJoCo run")
    n_agents, agent_ids = env.n_agents, list(range(env.n_agents))
    critic_target, xi_target = targets["critic"], targets["xi"]

    rng = np.random.default_rng(0)
    noise_stream = torch.Generator().manual_seed(0)
    out = dict(run_dir=str(run_dir), algorithm=M.algorithm(args)[0], env_id=args.env_id, seed=args.seed, step=step,
               epsilon=args.epsilon, per_part=per_part, agents={})
    for e, i in enumerate(agent_ids):
        part_of = agent_data[i]["mixture_part"]
        rows = {}
        for p, name in enumerate(PARTS):
            where = np.flatnonzero(part_of == p)
            idx = torch.as_tensor(rng.choice(where, min(per_part, len(where)), replace=False))
            batch = {k: data[k][e : e + 1, idx] for k in ("obs", "actions", "rewards", "next_obs", "dones")}
            noise = torch.randn(1, len(idx) * args.n_samples, args.vae_latent_dim, generator=noise_stream)  # G1 clips it
            # target networks of agent e only: the ensemble's other members see the same batch and are ignored
            obs_all = {k: v.expand(n_agents, *v.shape[1:]) for k, v in batch.items()}
            next_value = M.bcq_next_value(obs_all["next_obs"], g1, xi_target, critic_target,
                                          noise.expand(n_agents, *noise.shape[1:]), args.lmbda)[e]
            q_sa = M.soft_clipped(critic_target(obs_all["obs"], obs_all["actions"]), args.lmbda)[e]
            rewards, dones = batch["rewards"][0], batch["dones"][0]
            raw = M.value_deviation(next_value, q_sa, rewards, dones, args.gamma, epsilon=float("inf"))
            vd = raw.clamp(1 - args.epsilon, 1 + args.epsilon)
            tn = lambda_tn[e, idx].float() if lambda_tn is not None else torch.ones(len(idx))
            rows[name] = dict(n=len(idx), lambda_vd_mean=vd.mean().item(), lambda_vd_abs_dev=(vd - 1).abs().mean().item(),
                              lambda_vd_in_paper_range=((raw >= 0.2) & (raw <= 1.4)).float().mean().item(),
                              lambda_vd_clipped=((raw - 1).abs() >= args.epsilon).float().mean().item(),
                              lambda_tn_mean=tn.mean().item(), lambda_tn_in_paper_range=((tn >= 0.2) & (tn <= 1.4)).float().mean().item(),
                              weight_mean=(vd * tn).mean().item(), q_mean=q_sa.mean().item())
        out["agents"][str(i)] = rows
    return out


def table(results: list[dict]) -> list[str]:
    lines = ["| run | agent | part | mean λ_vd | mean \|λ_vd − 1\| | λ_vd in [0.2, 1.4] | λ_vd clipped | mean λ_tn | λ_tn in [0.2, 1.4] | mean λ_vd·λ_tn | mean Q |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for agent, rows in r["agents"].items():
            for part, v in rows.items():
                lines.append(f"| {Path(r['run_dir']).name} | {agent} | {part} | {v['lambda_vd_mean']:.3f} | {v['lambda_vd_abs_dev']:.3f} | {v['lambda_vd_in_paper_range']:.3f} | "
                             f"{v['lambda_vd_clipped']:.4f} | {v['lambda_tn_mean']:.3f} | {v['lambda_tn_in_paper_range']:.3f} | "
                             f"{v['weight_mean']:.3f} | {v['q_mean']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders of MABCQ / BCQ-row runs of mabcq_continuous.py")
    parser.add_argument("--per-part", type=int, default=20_000, help="transitions per agent and part")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    a = parser.parse_args()
    if a.per_part < 1:
        raise InputError(f"--per-part must be at least 1, got {a.per_part}")
    torch.set_num_threads(1)
    results = []
    for run_dir in a.runs:  # a bad folder exits with one line (InputError is a SystemExit)
        results.append(weights_by_part(run_dir, a.per_part))
        print(f"{run_dir}: {results[-1]['algorithm']}, step {results[-1]['step']}, epsilon {results[-1]['epsilon']}", file=sys.stderr)
    print("\n".join(table(results)))
    if a.out:
        write_json(a.out, results)


if __name__ == "__main__":
    main()
