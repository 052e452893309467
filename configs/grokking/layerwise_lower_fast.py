# Layer-wise learning rates, the seed's three groups: embeddings 4x, lower block 2x, upper block + head 1x.
include('baseline.py')
label = 'grok_lower_fast'
layer_lr_mults = [4.0, 2.0, 1.0]
