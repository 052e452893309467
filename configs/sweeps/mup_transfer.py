"""
muP learning-rate transfer (README "muP"): the modern stack at widths 32 ... 256 with depth and heads fixed
(2 layers, 4 heads: the width is the only thing that changes), in the standard parametrization (label 'sp') and
in muP with base width 64 (label 'mup'), over the same LR grid (7 points, 1/3-decade steps), 1M tokens each.
Under SP the best LR moves with width; under muP it stays put.

    python sweep.py configs/sweeps/mup_transfer.py --local -j 2
    python analyze.py results/mup_transfer          # best LR per width and the fit log10(lr) = a + b log10(width)
"""
study = "mup_transfer"
WIDTHS = param("widths", [32, 64, 128, 256])
base = ["configs/modern.py"]
fixed = dict(dataset="stdlib", n_layer=2, n_head=4, mup_base_width=64, max_tokens=param("tokens", 1_000_000),
             eval_interval=100, eval_iters=10, keep_ckpt=False)
runs = [dict(label=name, use_mup=mup, n_embd=w) for name, mup in (("sp", False), ("mup", True)) for w in WIDTHS]
grid = dict(learning_rate=param("lrs", lr_grid(4e-3, per_decade=3, decades=1)))
seeds = [1]
