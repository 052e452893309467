# Pixel-by-pixel MNIST (14 x 14: python prepare.py mnist --size 14) with a small Transformer (learned positions
# over the 196 pixels); loss and accuracy at the label position only. Early stopping on validation loss.
label = 'mnist_transformer'
dataset = 'mnist_size14'
n_layer = 2
n_embd = 64
n_head = 2
optimizer = 'adamw'
learning_rate = 2e-3
weight_decay = 0.1
batch_size = 64
max_iters = 5000
eval_interval = 250
early_stopping_patience = 4
