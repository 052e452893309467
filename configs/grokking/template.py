# The common grokking template (the AI-Scientist grokking experiment that the layer-wise-LR study ran, README
# "Task datasets"): 2 post-LayerNorm blocks of width 128 with 4 heads, a final LayerNorm, GELU, learned positions,
# biases, an untied head (with a bias) over the answer tokens only, PyTorch's module initialization; AdamW lr 1e-3,
# betas (0.9, 0.98), weight decay 0.5 on every parameter, no gradient clipping, 50 warmup steps then constant;
# batches of 512 rows drawn with replacement, 7500 updates (run to the end: final accuracies are reported),
# validation accuracy on 8 x 512 validation rows every 10 updates, fp32. x / y mod 97 here; other tasks:
# --dataset=modular_sub_p97, modular_add_p97, permutation_n5. What still differs: README "Task datasets".
label = 'grok_template'
dataset = 'modular_div_p97'
n_layer = 2
n_embd = 128
n_head = 4
dropout = 0.0
norm = 'layernorm'
norm_position = 'post'
final_norm = True
activation = 'gelu'
mlp_ratio = 4.0
pos_encoding = 'learned'
bias = True
tie_embeddings = False
head_bias = True
answer_head = True
init = 'pytorch'
optimizer = 'adamw'
learning_rate = 1e-3
beta1 = 0.9
beta2 = 0.98
eps = 1e-8
weight_decay = 0.5
decay_embeddings = True
decay_vectors = True
grad_clip = 0.0
lr_schedule = 'constant'
warmup_iters = 50
batch_size = 512
rows_with_replacement = True
max_iters = 7500
target_val_acc = 0.0
eval_interval = 10
eval_rows = 4096
eval_batch_size = 512
dtype = 'float32'
log_interval = 500
ckpt_interval = 1000
