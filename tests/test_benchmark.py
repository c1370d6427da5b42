"""The throughput benchmark still runs (its numbers are measured by hand, never asserted)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_benchmark_prints_one_line_per_setting():
    proc = subprocess.run(
        [sys.executable, "benchmark/throughput.py", "--agents", "2", "3", "--hidden", "16", "--batch-size", "8",
         "--seconds", "0.05", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("agents=")]
    assert [line.split()[0] for line in lines] == ["agents=2", "agents=3"]
    assert all("ratio=" in line and "batched=" in line and "naive=" in line for line in lines)


def test_contention_benchmark_prints_alone_and_pair_lines():
    proc = subprocess.run(
        [sys.executable, "benchmark/contention.py", "--steps", "20", "--settings", "2", "--extra", "--n-transitions", "500",
         "--vae-steps", "5", "--hidden-dim", "8", "--eval-episodes", "2", "--analysis-states", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("threads=")]
    # one setting (alone, and a pair): every further setting is 3 more runs of the same code
    assert len(lines) == 3 and all("speed_vs_lone_2threads=" in line for line in lines)


def test_throughput_benchmarks_of_bcq_and_cql_print_their_lines():
    for algo in ("bcq", "cql"):
        cmd = ["benchmark/throughput.py", "--algo", algo, "--agents", "2", "--hidden", "8", "--batch-size", "8"]
        proc = subprocess.run([sys.executable, *cmd, "--seconds", "0.05", "--repeats", "1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.splitlines() if "ratio=" in line]
        assert len(lines) == 1 and "batched=" in lines[0], proc.stdout


def test_table11_prints_the_four_methods_next_to_the_papers_numbers():
    proc = subprocess.run([sys.executable, "benchmark/throughput.py", "--table11", "--seconds", "0.05", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ms per")]
    assert len(rows) == 2 and rows[1].endswith("| 18 | 10 | 4 | 3 |"), proc.stdout
    here = [float(x) for x in rows[0].strip("|").split("|")[1:]]
    assert len(here) == 4 and all(ms > 0 for ms in here), proc.stdout


def test_mkl_kernels_compares_each_setting_with_a_second_default_run_that_agrees():
    proc = subprocess.run([sys.executable, "-m", "benchmark.mkl_kernels", "--states", "16", "--batch", "4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("batch 4: default path: ")
    assert lines[1] == "  the default again: actions differ from the default's in 0 of 16 states (max |difference| 0.0e+00)"
    assert [line.split(":")[0].strip() for line in lines[2:]] == [
        "MKL_ENABLE_INSTRUCTIONS=SSE4_2", "MKL_ENABLE_INSTRUCTIONS=AVX512", "MKL_CBWR=AVX2", "MKL_CBWR=COMPATIBLE"]
