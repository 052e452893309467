# "Attention is all you need" (Vaswani et al. 2017) as small-model researchers run it: post-LayerNorm,
# sinusoidal positions added to embeddings scaled by sqrt(d), ReLU, biases, Adam (beta2 0.98, eps 1e-9, no
# weight decay), inverse-sqrt schedule after a linear warmup, xavier init, and the paper's
# sharing of the embedding and pre-softmax matrices (tied). No dropout: our runs see each token about once.
label = 'retro_2017'
norm = 'layernorm'
norm_position = 'post'
pos_encoding = 'sinusoidal'
scale_embeddings = True
activation = 'relu'
bias = True
optimizer = 'adam'
weight_decay = 0.0  # none in the paper; L2 coupled into Adam at the modern 0.1 would drive the weights to 0
beta1 = 0.9
beta2 = 0.98
eps = 1e-9
lr_schedule = 'inverse_sqrt'
init = 'xavier_normal'
tie_embeddings = True
