"""
The Transformer: a GPT-style decoder in which each 2017-2023 innovation is one config switch.

    activation     relu | gelu | silu | glu | swiglu | geglu   (gated ones: one fused up-projection)
    pos_encoding   none | sinusoidal | learned | rotary
    norm           layernorm | rmsnorm,  norm_position  pre | post (the 2017 post-LN)
    init           transformer (GPT-2: N(0, 0.02), residual projections / sqrt(2 n_layer)) | xavier_normal |
                   kaiming_normal | pytorch (module defaults)
    use_mup        Maximal Update Parametrization (Yang et al. 2022), see mup_lr_mult below

The defaults are the GPT-2 baseline (pre-LayerNorm, learned positions, GELU, tied embeddings, GPT-2 init).
flops_per_token() is the analytic count of ../shared/docs/results-format.md (6 * N_matmul + 12 * L * d * T).
"""
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

ACTIVATIONS = ("relu", "gelu", "silu", "glu", "swiglu", "geglu")
GATES = {"glu": torch.sigmoid, "swiglu": F.silu, "geglu": F.gelu}
POS_ENCODINGS = ("none", "sinusoidal", "learned", "rotary")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
INITS = ("transformer", "xavier_normal", "kaiming_normal", "pytorch")
FINAL_NORMS = ("auto", True, False)
MODEL_CHOICES = {"activation": ACTIVATIONS, "pos_encoding": POS_ENCODINGS, "norm": NORMS, "norm_position": NORM_POSITIONS,
                 "init": INITS, "final_norm": FINAL_NORMS}  # train.py's CHOICES include these


# ------------------------------------------------------------------------------------------- head + loss
# Chunks of the fused head + cross-entropy, in bytes of logits: a block of rows per matmul (logits in the matmul
# dtype) about the size of the L3 cache and, within it, a part per softmax pass (fp32) small enough to stay in cache
# (the sizes that were fastest on CPU: README "Performance"). On CUDA the chunks bound memory and keep kernels large.
FUSED_BLOCK_BYTES = {"cpu": 24 << 20, "cuda": 512 << 20}
FUSED_PASS_BYTES = {"cpu": 6 << 20, "cuda": 512 << 20}


def head_and_loss(x, weight, bias, targets, fused=True):
    """(logits, loss) of the output head x @ weight.T (+ bias) and the mean cross-entropy over the targets that
    are not -1 (task rows' unsupervised positions), as F.cross_entropy(ignore_index=-1) of fp32 logits.
    With targets and fused the logits are None and the loss is linear_cross_entropy's, which never forms them,
    unless they fit in one block anyway (a small vocabulary: nothing to save, and the plain path is as fast)."""
    if targets is not None and fused and x.numel() // x.shape[-1] > chunk_rows(x, weight)[1]:
        return None, linear_cross_entropy(x.reshape(-1, x.shape[-1]), weight, bias, targets.reshape(-1))
    logits = F.linear(x, weight, bias)
    loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(),
                                                        targets.reshape(-1), ignore_index=-1)
    return (None if targets is not None and fused else logits), loss


def chunk_rows(x, weight):
    """(matmul dtype: autocast's or x's, rows per block, rows per softmax pass) for x @ weight.T."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    block_bytes = FUSED_BLOCK_BYTES.get(device, FUSED_BLOCK_BYTES["cuda"])
    pass_bytes = FUSED_PASS_BYTES.get(device, FUSED_PASS_BYTES["cuda"])
    vocab = weight.shape[0]
    return dtype, max(1, block_bytes // (vocab * torch.finfo(dtype).bits // 8)), max(1, pass_bytes // (4 * vocab))


@torch.compiler.disable  # eager even in a compiled model: a loop of chunks that reuses its buffers
def linear_cross_entropy(x, weight, bias, targets):
    """Mean cross-entropy of x @ weight.T + bias against targets (-1: ignored), with x (rows, d), computed a
    chunk of rows at a time (chunked_cross_entropy); matmuls in the autocast dtype, if any."""
    dtype, block_rows, pass_rows = chunk_rows(x, weight)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return LinearCrossEntropy.apply(x, weight, bias, targets, dtype, block_rows, pass_rows)
    with torch.autocast(x.device.type, enabled=False):
        return chunked_cross_entropy(x, weight, bias, targets, dtype, block_rows, pass_rows, False)[0]


class LinearCrossEntropy(torch.autograd.Function):
    """linear_cross_entropy with autograd: the forward pass computes the gradients too (the softmax of a chunk is
    at hand only then), so the backward pass just scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, dtype, block_rows, pass_rows):
        with torch.autocast(x.device.type, enabled=False):
            loss, grads = chunked_cross_entropy(x, weight, bias, targets, dtype, block_rows, pass_rows, True)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        return tuple(None if g is None else g * grad_loss for g in ctx.saved_tensors) + (None,) * 4


def chunked_cross_entropy(x, weight, bias, targets, dtype, block_rows, pass_rows, with_grads):
    """(mean loss, (grad_x, grad_weight, grad_bias) or None). Per block of block_rows rows: the logits in one
    matmul, in dtype, and the target logits; then per part of pass_rows rows (small enough to stay in cache): an
    fp32 copy (unless dtype is fp32), the row max, softmax in place (one exp per logit), the max probability
    (= 1 / sum of exps) and the gradient of the logits, softmax - one-hot, written back in dtype; then grad_x and
    grad_weight of the block in two matmuls, each row weighted by its share of the mean (0 if ignored).
    loss = row max - log(max probability) - target logit: the log-sum-exp form, exact even where the target's
    probability underflows. Few, large ops (each costs a parallel region) and buffers allocated once per call."""
    n, vocab = x.shape[0], weight.shape[0]
    block_rows, pass_rows = min(block_rows, n), min(pass_rows, block_rows, n)
    x_all, w = x.to(dtype), weight.to(dtype)
    b = None if bias is None else bias.to(dtype)
    valid = targets != -1
    n_valid = valid.sum()
    row_weight = valid / n_valid.clamp(min=1)  # each row's share of the mean; 0 if ignored (as F.cross_entropy)
    minus_one_hot = -valid.float()  # ignored rows: target 0, nothing subtracted, weighted 0
    targets = targets.clamp(min=0)
    row_max, max_prob, target_logit = (torch.empty(n, device=x.device) for _ in range(3))
    logits_buf = torch.empty(block_rows, vocab, dtype=dtype, device=x.device)
    probs_buf = None if dtype == torch.float32 else torch.empty(pass_rows, vocab, device=x.device)
    rows = torch.arange(block_rows, device=x.device)
    if with_grads:
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, device=x.device)
        grad_b = None if bias is None else torch.zeros(vocab, device=x.device)
    for start in range(0, n, block_rows):
        end = min(start + block_rows, n)
        xs, logits = x_all[start:end], logits_buf[:end - start]
        if b is None:
            torch.mm(xs, w.t(), out=logits)
        else:
            torch.addmm(b, xs, w.t(), out=logits)
        target_logit[start:end] = logits[rows[:end - start], targets[start:end]]
        for p0 in range(start, end, pass_rows):
            p1 = min(p0 + pass_rows, end)
            part = logits[p0 - start:p1 - start]
            probs = part if probs_buf is None else probs_buf[:p1 - p0].copy_(part)
            torch.amax(probs, 1, out=row_max[p0:p1])
            torch._softmax(probs, 1, False, out=probs)
            torch.amax(probs, 1, out=max_prob[p0:p1])
            if with_grads:
                probs.index_put_((rows[:p1 - p0], targets[p0:p1]), minus_one_hot[p0:p1], accumulate=True)
                if probs is not part:
                    part.copy_(probs)
        if with_grads:
            weights = row_weight[start:end, None]
            grad_x[start:end] = torch.mm(logits, w).mul_(weights)
            xs_weighted = (xs * weights).to(dtype)
            if dtype == torch.float32:
                torch.addmm(grad_w, logits.t(), xs_weighted, out=grad_w)  # (FlopCounterMode sees addmm, not addmm_)
            else:  # the bf16/fp16 matmul, accumulated in fp32
                grad_w += torch.mm(logits.t(), xs_weighted)
            if grad_b is not None:
                grad_b += torch.mv(logits.t(), weights[:, 0].to(dtype))
    losses = row_max.sub_(max_prob.log_()).sub_(target_logit)
    loss = torch.where(valid, losses, 0.0).sum() / n_valid
    if not with_grads:
        return loss, None
    return loss, (grad_x, grad_w.to(weight.dtype), None if grad_b is None else grad_b.to(bias.dtype))


@dataclass
class LMConfig:
    """The fields every language model here has (the Transformer's GPTConfig, lstm.py's LSTMConfig). Defaults, here
    and in the subclasses, are train.py's."""
    vocab_size: int = 257
    block_size: int = 128
    n_layer: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    tie_embeddings: bool = True
    fused_loss: bool = True          # head + cross-entropy by linear_cross_entropy (False: full logits)


@dataclass
class GPTConfig(LMConfig):
    n_head: int = 4
    bias: bool = False
    activation: str = "gelu"
    mlp_ratio: float = 4.0           # hidden width of an ungated MLP, in units of n_embd
    glu_match_params: bool = True    # gated MLPs use 2/3 of that hidden width (multiple of 8): same parameters
    pos_encoding: str = "learned"
    rope_base: float = 10000.0
    norm: str = "layernorm"
    norm_position: str = "pre"
    final_norm: object = "auto"      # a norm before the head: auto (pre-LN yes, post-LN no) | True | False
    qk_norm: bool = False
    scale_embeddings: bool = False   # multiply token embeddings by sqrt(n_embd), as Vaswani et al. 2017 did (muP:
    #                                  sqrt(mup_base_width), a constant)
    head_bias: bool = False          # a bias on the untied output head (grokking templates have one)
    head_vocab_size: int = 0         # the head scores token ids 0..head_vocab_size-1 only (a task's answers, when
    #                                  they come first in its vocabulary); 0 = the whole vocabulary
    init: str = "transformer"
    init_std: float = 0.02
    use_mup: bool = False
    mup_base_width: int = 128
    mup_input_mult: float = 1.0
    mup_output_mult: float = 1.0
    mup_base_head_dim: int = 0       # the base model's head size; 0 = mup_base_width // n_head (heads fixed)

    def __post_init__(self):
        check_model_config(vars(self))

    @property
    def width_mult(self):
        return self.n_embd / self.mup_base_width if self.use_mup else 1.0


def check_model_config(c):
    """ValueError (one line) for a config the Transformer cannot build; c maps GPTConfig's field names (train.py's
    keys) to values. train.resolve_config reports the same as a start-up error, before any data is read."""
    for key, valid in MODEL_CHOICES.items():
        if c[key] not in valid:  # a typo must never select a default branch silently
            raise ValueError(f"{key}={c[key]!r} is not one of {', '.join(map(str, valid))}")
    if c["n_embd"] % c["n_head"]:
        raise ValueError(f"n_embd={c['n_embd']} is not divisible by n_head={c['n_head']}")
    if c["pos_encoding"] == "rotary" and (c["n_embd"] // c["n_head"]) % 2:
        raise ValueError(f"rotary needs an even head size; n_embd/n_head = {c['n_embd'] // c['n_head']}")
    if c["head_bias"] and c["tie_embeddings"]:
        raise ValueError("head_bias=True needs an untied head: set tie_embeddings=False")
    if c["use_mup"] and not c["mup_base_head_dim"] and c["mup_base_width"] % c["n_head"]:
        raise ValueError(f"mup_base_width={c['mup_base_width']} is not divisible by n_head={c['n_head']}; set "
                         f"mup_base_head_dim to the base model's head size")
    if c["use_mup"] and c["mup_base_width"] <= 0:
        raise ValueError("mup_base_width must be positive")


def mlp_hidden_size(cfg):
    hidden = cfg.mlp_ratio * cfg.n_embd
    if cfg.activation in GATES and cfg.glu_match_params:
        return max(8, 8 * round(hidden * 2 / 3 / 8))  # three matrices of 2/3 the width: same parameter count
    return int(round(hidden))


class RMSNormCPU(torch.autograd.Function):
    """F.rms_norm in one autograd node with a hand-derived backward, for eager fp32 on CPU: there torch's
    rms_norm is not a fused kernel but a chain of pow/mean/rsqrt/mul ops with as many again in the backward
    (~3x slower than this, ~5x slower than the fused LayerNorm). Same math; tests/test_model.py checks it."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(torch.linalg.vecdot(x, x).unsqueeze(-1).div_(x.shape[-1]).add_(eps))
        x_hat = x * rstd
        ctx.save_for_backward(x_hat, weight, rstd)
        return x_hat * weight

    @staticmethod
    def backward(ctx, grad):
        x_hat, weight, rstd = ctx.saved_tensors
        g_hat = grad * weight
        # y = x * rstd(x): dx = rstd * (g - x_hat * mean(g * x_hat)) over the normalized dimension
        mean_gx = torch.linalg.vecdot(g_hat, x_hat).unsqueeze(-1).div_(x_hat.shape[-1])
        grad_x = torch.addcmul(g_hat, x_hat, mean_gx, value=-1).mul_(rstd)
        grad_w = (grad * x_hat).reshape(-1, x_hat.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): no mean subtraction, no bias. The
    parameter is named as nn.RMSNorm's, so state dicts are interchangeable."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 under autocast
        if y.device.type == "cpu" and y.dtype == self.weight.dtype == torch.float32 and \
                not torch.compiler.is_compiling():
            y = RMSNormCPU.apply(y, self.weight, self.eps)
        else:
            y = F.rms_norm(y, (y.shape[-1],), self.weight, self.eps)  # fused on CUDA and under torch.compile
        return y.type_as(x)


def make_norm(cfg, dim):
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, eps=1e-5, bias=cfg.bias)


def sinusoidal_table(n_positions, dim):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)[:, : dim // 2]
    return table.float()


def rotary_tables(n_positions, head_dim, base):
    """cos and sin of position * theta_i, theta_i = base^(-2i/head_dim), shape (n_positions, head_dim/2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * inv_freq
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rotary(x, cos, sin):
    """Rotate the pairs (x[2i], x[2i+1]) of every head by the angle position * theta_i (RoPE, Su et al. 2021,
    the pairing of their paper and of LLaMA). cos, sin: (T, head_dim/2). Eager: one complex multiply, 3x faster
    on CPU than the same rotation in real arithmetic (one kernel forward and one backward, instead of six and a
    cat). Compiled: real arithmetic, which inductor fuses into one kernel (it has no complex code generation).
    Both rotate in fp32 with the fp32 tables and round once to x's dtype, so compiled training and eager
    evaluation compute the same thing under bf16 (the tables are not rounded to bf16)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    if torch.compiler.is_compiling():
        a, b = pairs.float().unbind(-1)
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).type_as(x)
    rotated = torch.view_as_complex(pairs.float()) * torch.complex(cos, sin)
    return torch.view_as_real(rotated).flatten(-2).type_as(x)


def causal_attention_bf16_cpu(q, k, v, scale, dropout_p):
    """softmax(q k^T * scale + causal mask) v in plain bf16 ops: on CPU torch's bf16 SDPA kernel is slower than
    these (README "Performance") and than its own fp32 kernel. q is scaled rather than the T x T scores (half the elements at T = 2 x head_dim), and the mask is
    added in place (its backward is free, unlike masked_fill's). Softmax statistics are fp32 inside the kernel;
    the result agrees with fp32 SDPA as closely as bf16 SDPA does (tests/test_model.py)."""
    q = q * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    att = (q @ k.transpose(-2, -1)).add_(causal_mask(q.shape[-2], q.device, q.dtype))
    return F.dropout(torch.softmax(att, dim=-1), dropout_p) @ v


@functools.lru_cache(maxsize=8)
def causal_mask(T, device, dtype):
    """0 on and below the diagonal, -inf above (the future): built once per length, device and dtype, as a normal
    tensor even when first asked for under inference_mode, so a later training step can use it."""
    with torch.inference_mode(False):
        future = torch.ones(T, T, dtype=torch.bool, device=device).triu(1)
        return torch.zeros(T, T, dtype=dtype, device=device).masked_fill_(future, float("-inf"))


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.n_embd // cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual_output = True
        self.q_norm = RMSNorm(self.head_dim, eps=1e-5) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, eps=1e-5) if cfg.qk_norm else None
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # muP: attention logits scale as 1/d_head, matched to the base model's 1/sqrt(d_head) (None where the head
        # size is the base's: the very same computation as the standard model). The base head size is
        # mup_base_width // n_head when widths keep the heads, mup_base_head_dim when they keep the head size
        # (configs/widths/: heads grow, the scale stays 1/sqrt(d_head))
        base_head_dim = cfg.mup_base_head_dim or cfg.mup_base_width // cfg.n_head
        self.scale = math.sqrt(base_head_dim) / self.head_dim if cfg.width_mult != 1.0 and \
            base_head_dim != self.head_dim else None

    def forward(self, x, rotary=None):
        B, T, C = x.shape
        qkv = self.qkv(x)
        plain_ops = qkv.dtype == torch.bfloat16 and qkv.device.type == "cpu" and not torch.compiler.is_compiling()
        if plain_ops:  # one copy into (3, B, n_head, T, head_dim), instead of one per matmul operand and backward
            q, k, v = qkv.view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).contiguous()
        else:  # split's backward is one cat (unbind's is a stack and a copy back: ~15% slower attention on CPU)
            q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in qkv.split(C, dim=2))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos[:T], sin[:T]), apply_rotary(k, cos[:T], sin[:T])
        dropout_p = self.dropout if self.training else 0.0
        if plain_ops:
            y = causal_attention_bf16_cpu(q, k, v, self.scale, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, dropout_p=dropout_p)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = mlp_hidden_size(cfg)
        self.gate = GATES.get(cfg.activation)
        self.act = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}.get(cfg.activation)
        # gated: one fused matmul produces both the gate and the value halves
        self.up = nn.Linear(cfg.n_embd, 2 * hidden if self.gate else hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.down.is_residual_output = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.up(x)
        if self.gate is not None:
            a, b = h.chunk(2, dim=-1)
            h = self.gate(a) * b
        else:
            h = self.act(h)
        return self.dropout(self.down(h))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1, self.attn = make_norm(cfg, cfg.n_embd), Attention(cfg)
        self.norm2, self.mlp = make_norm(cfg, cfg.n_embd), MLP(cfg)

    def forward(self, x, rotary=None):
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), rotary)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, rotary))  # post-LN (Vaswani et al. 2017): normalize after the add
        return self.norm2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_encoding == "learned" else None
        if cfg.pos_encoding == "sinusoidal":
            self.register_buffer("sinusoidal", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        if cfg.pos_encoding == "rotary":
            cos, sin = rotary_tables(cfg.block_size, cfg.n_embd // cfg.n_head, cfg.rope_base)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        # pre-LN needs a final norm; post-LN ends normed, but grokking templates add one anyway (final_norm=True)
        final_norm = cfg.norm_position == "pre" if cfg.final_norm == "auto" else cfg.final_norm
        self.norm_f = make_norm(cfg, cfg.n_embd) if final_norm else None
        self.n_out = cfg.head_vocab_size or cfg.vocab_size  # logits per position
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.n_embd, self.n_out, bias=cfg.head_bias)
        # Vaswani et al.'s sqrt(d_model); under muP sqrt(mup_base_width): the embedding output must not grow with
        # width (it equals sqrt(d_model) at the base width)
        scale = math.sqrt(cfg.mup_base_width if cfg.use_mup else cfg.n_embd) if cfg.scale_embeddings else 1.0
        self.embed_mult = scale * (cfg.mup_input_mult if cfg.use_mup else 1.0)
        # muP readout: logits scaled by 1/width_mult (applied to the final hidden state: same product, cheaper)
        self.readout_mult = cfg.mup_output_mult / cfg.width_mult if cfg.use_mup else 1.0
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self):
        """The config's init scheme. Under muP, hidden matrices get the base width's std / sqrt(width_mult) and
        embeddings and the readout keep their base-width std (Yang et al. 2022, Table 8), whatever the scheme:
        at mup_base_width the model is exactly the standard one."""
        cfg = self.config
        if cfg.init != "pytorch":  # 'pytorch': the modules' own init (Linear U(+-1/sqrt(fan_in)), Embedding N(0, 1))
            residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
            hidden_std_mult = 1 / math.sqrt(cfg.width_mult)  # muP with the constant-std GPT-2 init
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    if cfg.init == "transformer":
                        std = residual_std if getattr(module, "is_residual_output", False) else cfg.init_std
                        nn.init.normal_(module.weight, 0.0, std if module is self.lm_head else std * hidden_std_mult)
                    elif cfg.init == "xavier_normal":  # std = sqrt(2 / (fan_in + fan_out))
                        nn.init.xavier_normal_(module.weight)
                    else:  # kaiming_normal: std = sqrt(2 / fan_in)
                        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Embedding):
                    if cfg.init == "transformer":
                        nn.init.normal_(module.weight, 0.0, cfg.init_std)
                    elif cfg.init == "xavier_normal":
                        nn.init.xavier_normal_(module.weight)
                    else:
                        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if cfg.use_mup and cfg.init != "transformer" and cfg.width_mult != 1.0:
            # fan-based schemes already scale hidden matrices as 1/sqrt(width); embedding tables and the readout
            # (shape (rows, n_embd), torch's fan_in = n_embd) are brought back to the std they have at the base
            # width, as microsoft/mup's MuReadout._rescale_parameters does for the readout
            d, d0 = cfg.n_embd, cfg.mup_base_width
            with torch.no_grad():
                for w in self.embedding_params() + ([self.lm_head.weight] if self.lm_head is not None else []):
                    is_head = self.lm_head is not None and w is self.lm_head.weight
                    if cfg.init == "xavier_normal":  # std sqrt(2 / (rows + n_embd))
                        w.mul_(math.sqrt((w.shape[0] + d) / (w.shape[0] + d0)))
                    elif cfg.init == "kaiming_normal" or is_head:  # sqrt(2 / n_embd); pytorch Linear 1/sqrt(3 n_embd)
                        w.mul_(math.sqrt(d / d0))
                    # pytorch's embeddings are N(0, 1) at every width: nothing to do

    # ------------------------------------------------------------------ forward
    def forward(self, idx, targets=None, return_logits=False):
        B, T = idx.shape
        x = self.wte(idx)
        if self.embed_mult != 1.0:
            x = x * self.embed_mult
        if self.wpe is not None:
            x = x + self.wpe.weight[:T]
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.sinusoidal[:T]
        rotary = (self.rotary_cos, self.rotary_sin) if self.config.pos_encoding == "rotary" else None
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rotary)
        if self.norm_f is not None:
            x = self.norm_f(x)
        if self.readout_mult != 1.0:
            x = x * self.readout_mult
        # targets of -1 (unsupervised positions of task rows) are ignored; with targets the logits are None unless
        # asked for (fused_loss never forms them)
        head = self.wte.weight[:self.n_out] if self.lm_head is None else self.lm_head.weight
        return head_and_loss(x, head, None if self.lm_head is None else self.lm_head.bias, targets,
                             fused=self.config.fused_loss and not return_logits)

    # ------------------------------------------------------------------ accounting
    def embedding_params(self):
        return [self.wte.weight] + ([self.wpe.weight] if self.wpe is not None else [])

    def num_params(self, non_embedding=False):
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if non_embedding:
            total -= sum(p.numel() for p in self.embedding_params())
        return total

    def flops_per_token(self):
        """Training FLOPs per token: 6 * (weights in matmuls, head included) + 12 * n_layer * n_embd * T."""
        cfg = self.config
        n_matmul = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
        n_matmul += self.n_out * cfg.n_embd  # the output head, tied or not
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def param_info(self):
        """(name, parameter, kind, layer) for every parameter, for optimizer groups.
        kind: 'embedding' (token/position tables), 'hidden' (matrices inside blocks), 'readout' (untied head),
        'vector' (norm gains and biases). layer: 0 embeddings, 1..n_layer blocks, n_layer + 1 final norm/head."""
        L = self.config.n_layer
        for name, p in self.named_parameters():
            if name.startswith(("wte.", "wpe.")):
                yield name, p, "embedding", 0
            elif name.startswith("lm_head."):
                yield name, p, ("readout" if p.dim() >= 2 else "vector"), L + 1
            elif name.startswith("norm_f."):
                yield name, p, "vector", L + 1
            else:
                layer = int(name.split(".")[1]) + 1
                yield name, p, ("hidden" if p.dim() >= 2 else "vector"), layer


def mup_lr_mult(kind, optimizer, width_mult):
    """muP learning-rate multipliers (Yang et al. 2022, Table 8: the formulation with an output multiplier that
    microsoft/mup's MuReadout, MuAdam and MuSGD implement). kind as in GPT.param_info.
    Adam-family: hidden matrices lr / width_mult; embeddings, vectors (norm gains, biases) and the readout the
    base lr. SGD: hidden matrices the base lr (their fan_in and fan_out grow together); embeddings, vectors and
    the readout lr * width_mult.
    Tied embeddings: the shared matrix is the input embedding and the readout at once. In this formulation both
    roles are vector-like (one dimension grows with width) with the same init (width-independent std) and the
    same LR rule, so the shared matrix simply follows it, as microsoft/mup's MuSharedReadout does; the 1/width_mult
    multiplier sits on the logits only, not on the embedding output."""
    if width_mult == 1.0:
        return 1.0
    if optimizer == "sgd":
        return 1.0 if kind == "hidden" else width_mult
    return 1.0 / width_mult if kind == "hidden" else 1.0


def mup_wd_mult(kind, optimizer, width_mult):
    """muP weight-decay multipliers that keep every parameter's per-step decay, lr * weight_decay, independent of
    width (torch's AdamW shrinks p by lr * wd; Adam and SGD add wd * p to the gradient), as microsoft/mup's
    MuAdam, MuAdamW and MuSGD do by default: Adam-family hidden matrices wd * width_mult (their lr is divided by
    it); SGD embeddings, vectors and readout wd / width_mult. Without it a muP model's hidden matrices decay
    width_mult times less than the base model's."""
    if width_mult == 1.0:
        return 1.0
    if optimizer == "sgd":
        return 1.0 if kind == "hidden" else 1.0 / width_mult
    return width_mult if kind == "hidden" else 1.0
