"""
Two-stage recipe, stage 2: the scaling grid (widths x token budgets), each width at its best learning rate
from stage 1 (configs/sweeps/lr_scaling.py), read back from that sweep's results with analyze.py's best-LR
code: the parabola-refined optimum by default; 'grid' for the best grid point; 'trend' for the fitted
lr(width) trend, which also covers widths the LR sweep did not run.

    python sweep.py configs/sweeps/lr_scaling.py --local -j 2      # stage 1
    python sweep.py configs/sweeps/scaling.py --local -j 2         # stage 2
    python fit_scaling.py results/scaling
    # best LRs from analyze.py's JSON instead of the results folder, and wider models from the trend:
    python analyze.py results/lr_scaling --json lr.json
    python sweep.py configs/sweeps/scaling.py --set lr_source=lr.json --set lr_from=trend --set widths=[256,512]
"""
study = "scaling"
base = ["configs/modern.py"]
WIDTHS = param("widths", [32, 64, 128])
LR_SOURCE = param("lr_source", "results/lr_scaling")
LR_FROM = param("lr_from", "refined")   # grid | refined | trend
fixed = dict(dataset="stdlib", eval_interval=100)
runs = [dict(width(w), learning_rate=best_lr(LR_SOURCE, w, label="modern", use=LR_FROM)) for w in WIDTHS]
grid = dict(max_tokens=[500_000, 1_000_000, 2_000_000])
seeds = [1]
