# The modern stack with post-norm (normalize after the residual add, as in 2017).
include('../modern.py')
label = 'modern_minus_prenorm'
norm_position = 'post'
