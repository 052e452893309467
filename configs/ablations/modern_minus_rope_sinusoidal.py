# The modern stack with fixed sinusoidal positions instead of RoPE, with the token embeddings scaled by sqrt(n_embd)
# as the 2017 recipe does (without it the unit-amplitude table drowns the 0.02-std token embeddings).
include('../modern.py')
label = 'modern_minus_rope_sinusoidal'
pos_encoding = 'sinusoidal'
scale_embeddings = True
