# The modern stack with xavier-normal init instead of the GPT-2 init.
include('../modern.py')
label = 'modern_minus_init'
init = 'xavier_normal'
