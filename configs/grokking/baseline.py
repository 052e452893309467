# Grokking baseline (Power et al. 2022, as commonly run): x / y mod 97 with half of all equations for training,
# 2 layers, width 128, 4 heads, AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1.0 on every matrix (embeddings
# too), 50 warmup steps then a constant LR, batch 512, at most 7500 steps; stops at 99% validation accuracy.
# Other tasks: --dataset=modular_add_p97, modular_sub_p97, permutation_n5 (python prepare.py modular --op add).
label = 'grok_baseline'
dataset = 'modular_div_p97'
n_layer = 2
n_embd = 128
n_head = 4
dropout = 0.0
optimizer = 'adamw'
learning_rate = 1e-3
beta1 = 0.9
beta2 = 0.98
weight_decay = 1.0
decay_embeddings = True
lr_schedule = 'constant'
warmup_iters = 50
batch_size = 512
max_iters = 7500
eval_interval = 50
log_interval = 50
target_val_acc = 0.99
