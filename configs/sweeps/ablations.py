"""
Ablations at one width: the modern stack, each innovation reverted alone (configs/ablations/, one config file
per variant, labelled by the file), and the 2017 stack, 3 seeds each, at a fixed token budget.

    python sweep.py configs/sweeps/ablations.py --local -j 2
    python analyze.py results/ablations --baseline modern    # compute-equivalent gain of each innovation
    python sweep.py configs/sweeps/ablations.py --set width=256 --max_tokens=1e8 | sbatch

The same list written inline, without config files, is a runs list of override dicts:
    runs = [dict(label="modern"), dict(label="minus_rope", pos_encoding="learned"), ...]
"""
study = "ablations"
base = []  # each variant's file includes configs/modern.py (or is configs/retro_2017.py)
runs = variants("configs/modern.py", "configs/ablations/*.py", "configs/retro_2017.py")
grid = dict(width=[width(param("width", 64))])  # a bundle axis: the width file comes after each variant's file
fixed = dict(dataset="stdlib", max_tokens=1_000_000, eval_interval=50, learning_rate=param("lr", 3e-3))
seeds = [1, 2, 3]
