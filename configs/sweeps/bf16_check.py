"""
Precision check (README "Performance"): does bf16 autocast on the CPU reach the same validation loss as fp32 at
equal tokens? The modern stack at width 128 (where dtype='auto' picks bf16 on CPUs with native bf16), 1M tokens,
fp32 (label 'fp32') and bf16 (label 'bf16') at the same LR, 3 seeds each.

    python sweep.py configs/sweeps/bf16_check.py --local -j 2
    python analyze.py results/bf16_check --vs label   # final val loss per precision, mean and standard error
"""
study = "bf16_check"
W = param("width", 128)
base = ["configs/modern.py", f"configs/widths/{W}d.py"]
fixed = dict(dataset="stdlib", learning_rate=param("lr", 1e-3), max_tokens=param("tokens", 1_000_000),
             eval_interval=100, eval_iters=10, keep_ckpt=False)
runs = [dict(label="fp32", dtype="float32"), dict(label="bf16", dtype="bfloat16")]
seeds = param("seeds", [1, 2, 3])
