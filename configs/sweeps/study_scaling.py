"""
The study, stage 3 of 3: frontiers and our own allocation law. The LSTM, the 2017 Transformer and the modern
Transformer at widths 32, 48, 64, 96 and 128, each at its best LR from stage 1 (refined where stage 1 swept
the width, else the fitted lr(width) trend), seed 2, 6M tokens, WSD with cooldown branches at 0.375M-3M tokens:
each run gives annealed points at five budgets, so each family's runs are a 5 N x 5 D grid for approach 3.

    python sweep.py configs/sweeps/study_scaling.py --local -j 2
    python fit_scaling.py results/study_scaling --extrapolate 1e18 --json docs/study/fit_scaling.json
"""
study = "study_scaling"
TOKENS_PER_STEP = 16 * 128  # train.py's batch_size x block_size, which the width presets keep
WIDTHS = param("widths", [32, 48, 64, 96, 128])
SWEPT = param("lr_widths", [32, 64, 128])   # widths stage 1 swept; others take the trend
LR_SOURCE = param("lr_source", "results/study_lr")
COOLDOWN_TOKENS = param("cooldown_tokens", [375_000, 750_000, 1_500_000, 3_000_000])
WSD = dict(lr_schedule="wsd", decay_frac=0.2, decay_shape="1-sqrt", warmup_iters=73,
           cooldowns=[round(t / TOKENS_PER_STEP) for t in COOLDOWN_TOKENS])
runs = [dict(config=[v["config"], f"configs/widths/{w}d.py"], label=v["label"], **WSD,
             learning_rate=best_lr(LR_SOURCE, w, label=v["label"], use="refined" if w in SWEPT else "trend"))
        for v in variants("configs/lstm.py", "configs/retro_2017.py", "configs/modern.py") for w in WIDTHS]
fixed = dict(dataset="stdlib", max_tokens=param("tokens", 6_000_000), eval_interval=100, eval_iters=10,
             keep_ckpt=False)
seeds = param("seeds", [2])
