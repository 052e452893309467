"""
The smoke sweep: 4 tiny CPU runs on the embedded corpus (2 learning rates x 2 seeds, a few seconds each),
the sweep CI and new users try first, and the default of `python sweep.py`.

    python sweep.py --local -j 2          # here, two at a time
    python sweep.py | sbatch              # on a SLURM cluster (CPU only: no GPU is requested)
    python sweep.py --list                # status of each run
"""
study = "smoke"
fixed = dict(label="smoke", dataset="stdlib", n_layer=1, n_head=2, n_embd=32, block_size=64, batch_size=8,
             max_iters=30, eval_interval=10, eval_iters=2, log_interval=10, device="cpu", dtype="float32")
grid = dict(learning_rate=[1e-3, 3e-3])
seeds = [1, 2]
slurm = dict(gpus=0, cpus=1, mem="2G", time="00:10:00")
