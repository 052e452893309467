# The modern stack with learned absolute positions instead of RoPE.
include('../modern.py')
label = 'modern_minus_rope'
pos_encoding = 'learned'
