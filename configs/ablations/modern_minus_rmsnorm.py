# The modern stack with LayerNorm instead of RMSNorm.
include('../modern.py')
label = 'modern_minus_rmsnorm'
norm = 'layernorm'
