# The modern stack with a GELU MLP instead of SwiGLU (same parameter count).
include('../modern.py')
label = 'modern_minus_swiglu'
activation = 'gelu'
