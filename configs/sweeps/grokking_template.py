"""
Grokking as the layer-wise-LR study ran it (README "Task datasets"): the template preset (post-LN, untied head over
the answers, weight decay 0.5 on every parameter, 7500 updates, evaluated every 10), its four layer-wise LR
settings and our stronger baseline preset (stops at 99%) on x/y, x-y, x+y mod 97 and S5 composition, 3 seeds each:
6 x 4 x 3 = 72 runs. Prepare the tasks first (offline, a second each):

    for op in add sub div; do python prepare.py modular --op $op --p 97; done
    python prepare.py permutation --n 5
    python sweep.py configs/sweeps/grokking_template.py --local -j 2
    python analyze.py results/grokking_template --published configs/grokking/published.csv   # beside the paper

About 4.6 h on 2 idle CPU cores: the template runs in fp32, as the study did (9 min a run here). --dtype=bfloat16
on this command line (not in `fixed`: the presets set dtype) runs it 2.6x faster on a CPU with native bf16: 2.2 h
measured for all 72 runs at -j 2 (README "Task datasets" has the results and what bf16 changed). --set tasks=[modular_div_p97] --set seeds=[1] runs a slice.
"""
study = "grokking_template"
runs = variants("configs/grokking/template.py", "configs/grokking/template_lr_*.py", "configs/grokking/baseline.py")
grid = dict(dataset=param("tasks", ["modular_div_p97", "modular_sub_p97", "modular_add_p97", "permutation_n5"]))
fixed = dict(keep_ckpt=False)
seeds = param("seeds", [1, 2, 3])
