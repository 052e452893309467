# Layer-wise learning rates as a geometric ramp: layer i (0 = embeddings, 3 = head) gets 0.5**i of the LR x 4,
# i.e. 4x, 2x, 1x, 0.5x from the embeddings up.
include('baseline.py')
label = 'grok_ramp'
learning_rate = 4e-3
layer_lr_ramp = 0.5
