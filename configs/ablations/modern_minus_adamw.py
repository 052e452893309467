# The modern stack with Adam and L2 decay coupled into the gradient instead of AdamW.
include('../modern.py')
label = 'modern_minus_adamw'
optimizer = 'adam'
