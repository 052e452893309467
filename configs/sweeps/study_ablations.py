"""
The study, stage 2 of 3: is each innovation's gain scale-invariant? The modern stack, each innovation reverted
alone (configs/ablations/) and the 2017 stack at widths 32, 64 and 128, each at its own refined best LR at that
width from stage 1, 3 seeds (2, 3, 4: not the seed that chose the LR), 3M tokens, WSD with cooldown branches at
0.375M, 0.75M and 1.5M tokens: each run gives annealed losses at four budgets. Every stack trains with WSD
here (the 2017 one too), so modern_minus_cosine, a schedule, is measured in its own stage (study_schedules.py).

    python sweep.py configs/sweeps/study_ablations.py --local -j 2
    python analyze.py results/study_ablations --baseline modern --json docs/study/analyze.json
"""
study = "study_ablations"
TOKENS_PER_STEP = 16 * 128  # train.py's batch_size x block_size, which the width presets keep
WIDTHS = param("widths", [32, 64, 128])
LR_SOURCE = param("lr_source", "results/study_lr")
COOLDOWN_TOKENS = param("cooldown_tokens", [375_000, 750_000, 1_500_000])
WSD = dict(lr_schedule="wsd", decay_frac=0.2, decay_shape="1-sqrt", warmup_iters=73,
           cooldowns=[round(t / TOKENS_PER_STEP) for t in COOLDOWN_TOKENS])
LR_AT = param("lr_at", {})  # {label: {width: lr}} in place of stage 1's choice (README Results: the RoPE check)
runs = [dict(config=[v["config"], f"configs/widths/{w}d.py"], label=v["label"], **WSD,
             learning_rate=LR_AT.get(v["label"], {}).get(w) or best_lr(LR_SOURCE, w, label=v["label"], use="refined"))
        for v in variants("configs/modern.py", "configs/ablations/*.py", "configs/retro_2017.py") for w in WIDTHS
        if v["label"] != "modern_minus_cosine"]
fixed = dict(dataset="stdlib", max_tokens=param("tokens", 3_000_000), eval_interval=100, eval_iters=10,
             keep_ckpt=False)
seeds = param("seeds", [2, 3, 4])
