"""
CEG from annealed points (issue 17): modern, modern_minus_rope and modern_minus_swiglu at width 64, 3 seeds, each at
its best LR from stage 1 (as configs/sweeps/study_ablations.py), one WSD run of 3M tokens per seed with cooldown
branches at 0.375M, 0.75M and 1.5M tokens: every run gives the final losses of four budgets (anneal.csv and its
own final row) for about 1.2 runs' compute. Compare with study_ablations' mid-schedule CEG on cosine runs.

    python sweep.py configs/sweeps/ceg_method.py --local -j 2
    python analyze.py results/ceg_method --baseline modern
    python sweep.py configs/sweeps/ceg_method.py --local -j 2 --set schedule=cosine   # the same runs, cosine
    python analyze.py results/ceg_method_cosine --baseline modern --method curve       # the mid-schedule CEG
"""
SCHEDULE = param("schedule", "wsd")  # wsd (annealed points) | cosine (one cosine run per seed: the mid-schedule method)
study = "ceg_method" if SCHEDULE == "wsd" else f"ceg_method_{SCHEDULE}"
W = param("width", 64)
LR_SOURCE = param("lr_source", "results/study_lr")
TOKENS_PER_STEP = 16 * 128  # train.py's batch_size x block_size, which the width presets keep
COOLDOWN_TOKENS = param("cooldown_tokens", [375_000, 750_000, 1_500_000])
WSD = dict(lr_schedule="wsd", decay_frac=0.2, decay_shape=param("decay_shape", "1-sqrt"),
           warmup_iters=73,  # the 5% warmup of study_ablations' 3M-token cosine runs, fixed in steps
           cooldowns=[round(t / TOKENS_PER_STEP) for t in COOLDOWN_TOKENS])
SCHEDULE_KEYS = WSD if SCHEDULE == "wsd" else dict(lr_schedule=SCHEDULE)
runs = [dict(config=[v["config"], f"configs/widths/{W}d.py"], label=v["label"],
             learning_rate=best_lr(LR_SOURCE, W, label=v["label"], use="refined"), **SCHEDULE_KEYS)  # after modern.py's cosine
        for v in variants("configs/modern.py", "configs/ablations/modern_minus_rope.py",
                          "configs/ablations/modern_minus_swiglu.py")]
fixed = dict(dataset="stdlib", max_tokens=param("tokens", 3_000_000), eval_interval=100, eval_iters=10,
             keep_ckpt=False)
seeds = param("seeds", [1, 2, 3])
