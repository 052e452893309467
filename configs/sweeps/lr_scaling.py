"""
Learning-rate sweep at several widths on the modern stack (the seed's create_multi_lr_experiments): for each
width, an LR grid around a centre that moves as width^-0.5, in half-decade steps. Stage 1 of the two-stage
recipe; stage 2 (configs/sweeps/scaling.py) reads each width's best LR back from these results.

    python sweep.py configs/sweeps/lr_scaling.py --local -j 2
    python analyze.py results/lr_scaling                    # best LR per width and the lr(width) trend
    # the same file on a GPU cluster, wider, finer and longer:
    python sweep.py configs/sweeps/lr_scaling.py --set widths=[256,512,1024] --set per_decade=4 \\
        --max_tokens=2e8 --time=08:00:00 | sbatch
"""
study = "lr_scaling"
base = ["configs/modern.py"]
WIDTHS = param("widths", [32, 64, 128])        # presets in configs/widths/ (depth and heads go with the width)
CENTRE = param("centre", 3e-3)                 # the grid's centre at width 64
PER_DECADE = param("per_decade", 2)            # 2: half-decade steps; 4: quarter-decade
fixed = dict(dataset="stdlib", max_tokens=1_000_000, eval_interval=50)
runs = [dict(width(w), learning_rate=lr) for w in WIDTHS
        for lr in lr_grid(CENTRE * (64 / w) ** 0.5, per_decade=PER_DECADE, decades=1)]
seeds = [1]
