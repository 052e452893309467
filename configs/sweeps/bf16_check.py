"""
Precision check (README "Performance"): does bf16 autocast on the CPU reach the same validation loss as fp32 at
equal tokens? By default the modern stack at width 128 (where dtype='auto' picks bf16 on CPUs with native bf16),
1M tokens, fp32 (label 'fp32') and bf16 (label 'bf16') at the same LR, 3 seeds each.

    python sweep.py configs/sweeps/bf16_check.py --local -j 2
    python analyze.py results/bf16_check --vs label   # final val loss per precision, mean and standard error

The GPT-2-style 6L x 256 model that `bench.py --suite` times (train.py's defaults with biases), 500k tokens:

    python sweep.py configs/sweeps/bf16_check.py --local -j 2 --set preset= --set width=256 --set tokens=500000 \\
        --set study=bf16_check_gpt2 --n_layer=6 --bias=True
"""
study = param("study", "bf16_check")
W = param("width", 128)
PRESET = param("preset", "configs/modern.py")  # '' = train.py's defaults (the GPT-2-style block)
base = ([PRESET] if PRESET else []) + [f"configs/widths/{W}d.py"]
fixed = dict(dataset="stdlib", learning_rate=param("lr", 1e-3), max_tokens=param("tokens", 1_000_000),
             eval_interval=100, eval_iters=10, keep_ckpt=False)
runs = [dict(label="fp32", dtype="float32"), dict(label="bf16", dtype="bfloat16")]
seeds = param("seeds", [1, 2, 3])
