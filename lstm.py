"""
The LSTM baseline: a language model with model.py's interface (forward(idx, targets) -> (logits, loss),
num_params, flops_per_token, param_info), trained by the same train.py with arch='lstm'.

    token embedding (n_embd) -> dropout -> n_layer stacked LSTM layers (fused nn.LSTM: cuDNN on GPU,
    oneDNN on CPU; dropout between layers) -> dropout -> output head (tied to the embedding by default)

Widths: the embedding is n_embd wide; the LSTM is lstm_hidden wide (0: n_embd); lstm_proj > 0 adds the
LSTMP projection of the hidden state (Sak et al. 2014). A tied head needs the LSTM's output width (lstm_proj
or lstm_hidden) to equal n_embd: LSTMConfig refuses other combinations (train.py at start-up) rather than
inserting a projection the FLOP count would have to explain.

Defaults and why: forget-gate bias 1.0 (Jozefowicz et al. 2015: helps gradients flow early in training);
xavier-uniform gate matrices per gate (fan-in/fan-out aware, like the Transformer's xavier option), embeddings
U(-0.1, 0.1) (Zaremba et al. 2014); dropout on embeddings, between layers and before the head (the
non-recurrent connections, Zaremba et al.). Gradient clipping and the optimizer are train.py keys;
configs/lstm.py sets the recipe used in this project's comparisons (Adam-family, grad_clip 1.0).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from model import LMConfig, head_and_loss

LSTM_INITS = ("xavier", "uniform", "pytorch")


@dataclass
class LSTMConfig(LMConfig):
    lstm_hidden: int = 0             # 0: n_embd
    lstm_proj: int = 0               # LSTMP projection width; 0: none
    lstm_forget_bias: float = 1.0
    lstm_init: str = "xavier"
    lstm_init_range: float = 0.1     # for lstm_init='uniform': U(-r, r)

    def __post_init__(self):
        check_lstm_config(vars(self))

    @property
    def hidden(self):
        return self.lstm_hidden or self.n_embd

    @property
    def out_dim(self):
        return self.lstm_proj or self.hidden


def check_lstm_config(c):
    """ValueError (one line) for a config the LSTM cannot build; c maps LSTMConfig's field names (train.py's keys)
    to values. train.resolve_config reports the same as a start-up error."""
    if c["lstm_init"] not in LSTM_INITS:  # a typo must not fall through to some default
        raise ValueError(f"lstm_init={c['lstm_init']!r} is not one of {', '.join(LSTM_INITS)}")
    width = c["lstm_hidden"] or c["n_embd"]
    out_dim = c["lstm_proj"] or width
    if c["tie_embeddings"] and out_dim != c["n_embd"]:
        raise ValueError(f"tie_embeddings needs the LSTM output width ({out_dim}) to equal n_embd ({c['n_embd']}): "
                         f"set tie_embeddings=False or matching widths")
    if c["lstm_proj"] and c["lstm_proj"] >= width:
        raise ValueError("lstm_proj must be smaller than the LSTM width (lstm_hidden or n_embd)")


class LSTMLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.n_embd, cfg.hidden, cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, proj_size=cfg.lstm_proj)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.out_dim, cfg.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self):
        cfg, h = self.config, self.config.hidden
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        if self.lm_head is not None:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)
        for name, p in self.lstm.named_parameters():
            if name.startswith("weight_"):
                if cfg.lstm_init == "xavier":
                    for gate in p.data.split(h) if not name.startswith("weight_hr") else [p.data]:
                        nn.init.xavier_uniform_(gate)  # each gate's matrix separately: fan_out h, not 4h
                elif cfg.lstm_init == "uniform":
                    nn.init.uniform_(p, -cfg.lstm_init_range, cfg.lstm_init_range)
            elif name.startswith("bias_") and cfg.lstm_init != "pytorch":
                nn.init.zeros_(p)
        with torch.no_grad():  # gates are ordered (input, forget, cell, output); the two biases add up
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias_"):
                    p[h:2 * h] = cfg.lstm_forget_bias if name.startswith("bias_ih") else 0.0

    def forward(self, idx, targets=None, state=None, return_logits=False):
        x = self.drop(self.wte(idx))
        y, _ = self.lstm(x, state)
        y = self.drop(y)
        head = self.wte.weight if self.lm_head is None else self.lm_head.weight
        return head_and_loss(y, head, None, targets, fused=self.config.fused_loss and not return_logits)

    def embedding_params(self):
        return [self.wte.weight]

    def num_params(self, non_embedding=False):
        total = sum(p.numel() for p in self.parameters())
        return total - (self.wte.weight.numel() if non_embedding else 0)

    def flops_per_token(self):
        """6 * N_matmul: per layer the four gates' input-to-hidden and hidden-to-hidden matrices (and the LSTMP
        projection), plus the output head. Gate nonlinearities and biases are not counted (the convention)."""
        cfg = self.config
        n_matmul, layer_in = 0, cfg.n_embd
        for _ in range(cfg.n_layer):
            n_matmul += 4 * cfg.hidden * (layer_in + cfg.out_dim)
            if cfg.lstm_proj:
                n_matmul += cfg.hidden * cfg.lstm_proj
            layer_in = cfg.out_dim
        n_matmul += cfg.vocab_size * cfg.out_dim
        return 6 * n_matmul

    def param_info(self):
        """(name, parameter, kind, layer), as model.GPT.param_info: layer 0 embedding, 1..n_layer LSTM layers,
        n_layer + 1 the head."""
        L = self.config.n_layer
        for name, p in self.named_parameters():
            if name.startswith("wte."):
                yield name, p, "embedding", 0
            elif name.startswith("lm_head."):
                yield name, p, "readout", L + 1
            else:  # lstm.weight_ih_l0, lstm.bias_hh_l1, ...
                layer = int(name.rsplit("_l", 1)[1].split("_")[0]) + 1
                yield name, p, ("hidden" if p.dim() >= 2 else "vector"), layer
