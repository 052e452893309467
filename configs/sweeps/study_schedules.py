"""
The study, the schedule stage: cosine vs inverse-sqrt. A schedule cannot be ablated inside WSD runs (their
cooldowns are the schedule), so each schedule trains separate runs at three budgets (0.75M, 1.5M, 3M tokens):
every run ends at its own schedule's end, its annealed point. The modern stack with its cosine schedule
(label modern_cosine) against modern_minus_cosine (inverse-sqrt), widths 32 and 64, each at its refined best
LR from stage 1, seeds 2, 3, 4.

    python sweep.py configs/sweeps/study_schedules.py --local -j 2
    python analyze.py results/study_schedules --baseline modern_cosine --json docs/study/schedules.json
"""
study = "study_schedules"
WIDTHS = param("widths", [32, 64])
BUDGETS = param("budgets", [750_000, 1_500_000, 3_000_000])
LR_SOURCE = param("lr_source", "results/study_lr")
STACKS = [dict(config="configs/modern.py", label="modern_cosine"),
          dict(config="configs/ablations/modern_minus_cosine.py", label="modern_minus_cosine")]
runs = [dict(config=[v["config"], f"configs/widths/{w}d.py"], label=v["label"], max_tokens=tokens,
             learning_rate=best_lr(LR_SOURCE, w, label=v["label"], use="refined"))
        for v in STACKS for w in WIDTHS for tokens in BUDGETS]
fixed = dict(dataset="stdlib", eval_interval=100, eval_iters=10, keep_ckpt=False)
seeds = param("seeds", [2, 3, 4])
