# The modern stack with fixed sinusoidal positions instead of RoPE.
include('../modern.py')
label = 'modern_minus_rope_sinusoidal'
pos_encoding = 'sinusoidal'
