# The modern (2023) stack: pre-RMSNorm, rotary positions, SwiGLU, AdamW, warmup + cosine, GPT-2 init, tied.
label = 'modern'
norm = 'rmsnorm'
norm_position = 'pre'
pos_encoding = 'rotary'
activation = 'swiglu'
optimizer = 'adamw'
lr_schedule = 'cosine'
init = 'transformer'
tie_embeddings = True
