# Layer-wise learning rates, the seed's three groups: embeddings 1x, lower block 2x, upper block + head 4x.
include('baseline.py')
label = 'grok_upper_fast'
layer_lr_mults = [1.0, 2.0, 4.0]
