# The modern stack with the 2017 inverse-sqrt schedule instead of cosine decay.
include('../modern.py')
label = 'modern_minus_cosine'
lr_schedule = 'inverse_sqrt'
