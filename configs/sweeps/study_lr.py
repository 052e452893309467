"""
The showcase study (README "Results"), stage 1 of 3: learning-rate sweeps on the embedded corpus at a short
budget (1M tokens). The 2017 Transformer, the modern Transformer and the LSTM at widths 32, 64, 128 and 192
over LRs 5e-4 ... 6.4e-2 (factors of 2; the LSTM also 0.128 and 0.256, its optimum lies higher), and each
ablation variant at width 64 over 1e-3 ... 1.6e-2, so that stages 2 and 3 run every variant at its own tuned LR.

    python sweep.py configs/sweeps/study_lr.py --local -j 2
    python analyze.py results/study_lr
    # on a GPU cluster, wider and longer, unchanged:
    python sweep.py configs/sweeps/study_lr.py --set widths=[256,512,1024] --set tokens=100_000_000 | sbatch
"""
study = "study_lr"
WIDTHS = param("widths", [32, 64, 128, 192])
LRS = param("lrs", [5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2])
ABLATION_WIDTH = param("ablation_width", 64)
ABLATION_LRS = param("ablation_lrs", [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2])
fixed = dict(dataset="stdlib", max_tokens=param("tokens", 1_000_000), eval_interval=100, eval_iters=10,
             keep_ckpt=False)
FAMILIES = variants("configs/retro_2017.py", "configs/modern.py", "configs/lstm.py")
ABLATIONS = variants("configs/ablations/*.py")
runs = [dict(config=[v["config"], f"configs/widths/{w}d.py"], label=v["label"], learning_rate=lr)
        for v in FAMILIES for w in WIDTHS for lr in LRS]
LSTM_EXTRA_LRS = param("lstm_extra_lrs", [1.28e-1, 2.56e-1])  # the LSTM's optimum lies above the common grid
runs += [dict(config=["configs/lstm.py", f"configs/widths/{w}d.py"], label="lstm", learning_rate=lr)
         for w in WIDTHS for lr in LSTM_EXTRA_LRS]
runs += [dict(config=[v["config"], f"configs/widths/{ABLATION_WIDTH}d.py"], label=v["label"], learning_rate=lr)
         for v in ABLATIONS for lr in ABLATION_LRS if v["label"] != "modern"]
seeds = [1]
