"""
The showcase study, stage 2 of 3: ablations at one small width. The modern stack, each innovation reverted alone
(configs/ablations/), and the 2017 stack, each at its own best LR from stage 1 (parabola-refined), 3 seeds, a
fixed budget of 3M tokens (about 30 tokens per non-embedding parameter at width 64).

    python sweep.py configs/sweeps/study_ablations.py --local -j 2
    python analyze.py results/study_ablations --baseline modern
"""
study = "study_ablations"
W = param("width", 64)
LR_SOURCE = param("lr_source", "results/study_lr")
runs = [dict(config=[v["config"], f"configs/widths/{W}d.py"], label=v["label"],
             learning_rate=best_lr(LR_SOURCE, W, label=v["label"], use="refined"))
        for v in variants("configs/modern.py", "configs/ablations/*.py", "configs/retro_2017.py")]
fixed = dict(dataset="stdlib", max_tokens=param("tokens", 3_000_000), eval_interval=100, eval_iters=10,
             keep_ckpt=False)
seeds = param("seeds", [1, 2, 3])
