"""
The showcase study, stage 3 of 3: scaling. The 2017 Transformer, the modern Transformer and the LSTM at widths
32, 64, 128 and 192, each at its best LR from stage 1 (parabola-refined; widths that stage 1 did not sweep, given
with --set widths=[...], take the fitted lr(width) trend), all for the same 6M tokens, so the small models
saturate and the frontier over widths is visible.

    python sweep.py configs/sweeps/study_scaling.py --local -j 2
    python fit_scaling.py results/study_scaling --compare modern lstm --extrapolate 1e18
"""
study = "study_scaling"
WIDTHS = param("widths", [32, 64, 128, 192])
SWEPT = param("lr_widths", [32, 64, 128, 192])   # widths stage 1 swept; others take the trend
LR_SOURCE = param("lr_source", "results/study_lr")
runs = [dict(config=[v["config"], f"configs/widths/{w}d.py"], label=v["label"],
             learning_rate=best_lr(LR_SOURCE, w, label=v["label"], use="refined" if w in SWEPT else "trend"))
        for v in variants("configs/retro_2017.py", "configs/modern.py", "configs/lstm.py") for w in WIDTHS]
fixed = dict(dataset="stdlib", max_tokens=param("tokens", 6_000_000), eval_interval=100, eval_iters=10,
             keep_ckpt=False)
seeds = [1]
