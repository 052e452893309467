"""
Grokking (README "Task datasets"): steps to 99% validation accuracy on x+y, x-y and x/y mod 97 for the baseline
preset and its layer-wise LR variants, 3 seeds each (each run stops at 99% or after 7500 steps). Prepare the tasks
first (offline, a second each):

    for op in add sub div; do python prepare.py modular --op $op --p 97; done
    python sweep.py configs/sweeps/grokking.py --local -j 2
    python analyze.py results/grokking               # steps to 99%: mean, standard error, runs that never got there
"""
study = "grokking"
runs = variants("configs/grokking/baseline.py", "configs/grokking/layerwise_*.py")
grid = dict(dataset=param("tasks", ["modular_add_p97", "modular_sub_p97", "modular_div_p97"]))
fixed = dict(keep_ckpt=False)
seeds = param("seeds", [1, 2, 3])
