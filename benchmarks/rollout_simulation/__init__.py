"""The GPU-shaped rollout simulation of ``benchmarks/rollout.py --simulate`` (see BENCHMARKS.md, "Rollout").

- ``workload``: recorded demo episodes, as replay scripts (``benchmarks/results/demo-episodes.json``);
- ``gpu``: the simulated GPU engine and the backend double that replays the recorded episodes on it;
- ``run``: one simulated rollout, lock-step or continuous, against real environments in the pool.
"""
