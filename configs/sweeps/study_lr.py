"""
The study (README "Results"), stage 1 of 3: learning-rate sweeps, WSD, one seed, 1M tokens. Every ablation
variant, the modern stack and the 2017 stack at widths 32, 64 and 128 (so each is compared at its own tuned LR
at each width), and the LSTM at the same widths. Five LRs a factor 2 apart, centred by width
(the optimum falls with width in the standard parametrization); the 2017 stack a factor 2 higher, the LSTM 16x.
Every run trains with WSD, the schedule of stages 2 and 3, except the two the schedule stage compares (each
with its own schedule): modern_minus_cosine (inverse-sqrt) and modern_cosine (the modern stack with cosine).
Later stages read the parabola-refined optimum (widths not swept: the fitted lr(width) trend).

    python sweep.py configs/sweeps/study_lr.py --local -j 2
    python analyze.py results/study_lr --json docs/study/lr.json
"""
study = "study_lr"
WSD = dict(lr_schedule="wsd", decay_frac=0.2, decay_shape="1-sqrt", warmup_iters=73)  # as stages 2 and 3
ABLATION_WIDTHS = param("ablation_widths", [32, 64, 128])
GRID = {32: [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2], 64: [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
        128: [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]}
SHIFT = {"retro_2017": 2, "lstm": 16}  # stage-1 optima of the old study: 2x and 16-60x modern's
fixed = dict(dataset="stdlib", max_tokens=param("tokens", 1_000_000), eval_interval=100, eval_iters=10,
             keep_ckpt=False)
STACKS = variants("configs/modern.py", "configs/ablations/*.py", "configs/retro_2017.py")
STACKS += [dict(config="configs/modern.py", label="modern_cosine"), dict(config="configs/lstm.py", label="lstm")]
OWN_SCHEDULE = ("modern_minus_cosine", "modern_cosine")
runs = [dict(config=[v["config"], f"configs/widths/{w}d.py"], label=v["label"],
             learning_rate=float(f"{lr * SHIFT.get(v['label'], 1):.3g}"),
             **({} if v["label"] in OWN_SCHEDULE else WSD))  # after the preset, so it replaces its schedule
        for v in STACKS for w in ABLATION_WIDTHS for lr in GRID[w]]
seeds = [1]
