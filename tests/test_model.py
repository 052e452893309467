"""
Tests for model.py and lstm.py: every switch of the algorithm zoo is what it claims (RMSNorm, RoPE, post-LN,
sinusoidal tables, gated MLPs, qk_norm, init schemes), parameter counts, invalid values, that each switch changes
only what it says, and the analytic FLOPs per token against torch.utils.flop_counter.FlopCounterMode and hand
counts (Transformer grid of switch combinations; the 2-layer LSTM).
"""
import itertools
import math
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import lstm
import model
import train
from configurator import UserError
from model import GPT, GPTConfig

torch.set_num_threads(1)
V, T, L, D, H = 37, 8, 2, 16, 2  # the tiny model of most tests


def tiny(**kw):
    return GPTConfig(**{**dict(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=D), **kw})


def build(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(tiny(**kw))


def tokens(batch=3, length=T, seed=0, vocab=V):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- FLOPs
def counted_flops_per_token(net, idx):
    """FlopCounterMode over one forward + backward, per token, split into the weight matmuls (aten.mm / addmm:
    the attention and MLP projections and the head) and attention (aten.bmm: Q K^T and A V)."""
    counter = FlopCounterMode(display=False)
    # torch 2.13's FlopCounterMode has no formula for the CPU flash-attention kernel that SDPA picks by default
    # (it would count attention as 0); the math backend computes the same thing with bmm's it does count
    with counter, sdpa_kernel(SDPBackend.MATH):
        _, loss = net(idx, idx)
        loss.backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(counts) <= {"aten.mm", "aten.addmm", "aten.bmm"}, counts  # nothing else is counted here
    n_tokens = idx.numel()
    return (counts.get("aten.mm", 0) + counts.get("aten.addmm", 0)) / n_tokens, counts.get("aten.bmm", 0) / n_tokens


SWITCHES = dict(activation=model.ACTIVATIONS, pos_encoding=model.POS_ENCODINGS, tie_embeddings=(True, False),
                norm=model.NORMS, norm_position=model.NORM_POSITIONS, bias=(False, True), qk_norm=(False, True),
                glu_match_params=(True, False))
GRID = list(itertools.product(*SWITCHES.values()))  # 1536 combinations
SAMPLE = random.Random(3).sample(GRID, 40)


def test_flop_sample_covers_every_switch_value():
    for i, (key, values) in enumerate(SWITCHES.items()):
        assert {combo[i] for combo in SAMPLE} == set(values), key


@pytest.mark.parametrize("combo", SAMPLE, ids=lambda c: "-".join(map(str, c)))
def test_flops_per_token_matches_flop_counter(combo):
    """How the two conventions relate, and why they agree exactly here:
    - Both count 2 FLOPs per multiply-add, and training = forward + backward, the backward doing two matmuls (the
      input gradient and the weight gradient) per forward matmul: 6 * N_matmul per token for the weight matmuls.
      Autograd skips an input gradient nobody needs (an input that requires no grad); here the embeddings are
      trained, so the first layer's input gradient is computed too (test_first_input_gradient_... shows the case
      where it is not).
    - The head counts V * n_embd in both, tied or not; the embedding lookups are not matmuls (0 in both).
    - Attention: FlopCounterMode counts the full T x T score matrix (the math kernel computes it all, then masks),
      i.e. 2*T*d for Q K^T plus 2*T*d for A V per token and layer forward, 3x that for training: 12 * L * d * T,
      exactly our term (the PaLM / nanoGPT convention, which does not halve it for causality either). A count of
      the work a causal flash kernel really does would be about (T + 1) / (2 T) of it.
    - Norms, activations, softmax, RoPE and the loss are not matmuls and are in neither count."""
    cfg = tiny(**dict(zip(SWITCHES, combo)))
    net = GPT(cfg)
    linear, attention = counted_flops_per_token(net, tokens())
    analytic_attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    assert attention == analytic_attention
    assert linear == net.flops_per_token() - analytic_attention


def hand_n_matmul(d, n_layer, vocab, mlp_hidden, gated):
    per_layer = 3 * d * d + d * d + (3 if gated else 2) * d * mlp_hidden  # qkv, proj, MLP matrices
    return n_layer * per_layer + vocab * d


def test_flops_per_token_hand_count():
    # d=16, L=2, V=37, T=8, GELU: N_matmul = 2 * (768 + 256 + 2 * 16 * 64) + 37 * 16 = 6736
    assert hand_n_matmul(16, 2, 37, 64, False) == 6736
    assert build().flops_per_token() == 6 * 6736 + 12 * 2 * 16 * 8 == 43488
    assert build(tie_embeddings=False).flops_per_token() == 43488  # the head is a matmul either way
    # SwiGLU at d=16: hidden 2/3 * 64 = 42.7 -> 40 (multiple of 8); three matrices of 16 x 40
    assert build(activation="swiglu").flops_per_token() == 6 * hand_n_matmul(16, 2, 37, 40, True) + 3072
    # a wider, deeper one: d=96, L=3, 3 heads, T=32, V=257
    cfg = GPTConfig(vocab_size=257, block_size=32, n_layer=3, n_head=3, n_embd=96, activation="geglu")
    assert model.mlp_hidden_size(cfg) == 256
    assert GPT(cfg).flops_per_token() == 6 * (3 * (4 * 96 * 96 + 3 * 96 * 256) + 257 * 96) + 12 * 3 * 96 * 32


def test_first_input_gradient_is_absent_when_the_embeddings_are_frozen():
    """The known way the counts can differ: with frozen embeddings and post-LN, block 0's qkv matmul gets the
    embeddings directly, so autograd skips its input gradient: 2 * (3d * d) FLOPs per token fewer. (Untied: a
    frozen tied table would also skip the head's weight gradient, 2 * V * d fewer.)"""
    net = build(norm_position="post", tie_embeddings=False)
    for p in net.embedding_params():
        p.requires_grad_(False)
    linear, attention = counted_flops_per_token(net, tokens())
    assert linear == net.flops_per_token() - 12 * L * D * T - 2 * 3 * D * D


def test_flops_do_not_depend_on_non_matmul_switches():
    base = build().flops_per_token()
    for kw in (dict(pos_encoding="rotary"), dict(pos_encoding="none"), dict(norm="rmsnorm"), dict(bias=True),
               dict(norm_position="post"), dict(qk_norm=True), dict(init="xavier_normal"), dict(tie_embeddings=False),
               dict(activation="relu"), dict(scale_embeddings=True), dict(dropout=0.1)):
        assert build(**kw).flops_per_token() == base, kw


def lstm_hand_flops(vocab, d, n_layer, hidden, proj):
    out = proj or hidden
    n, layer_in = 0, d
    for _ in range(n_layer):
        n += 4 * hidden * layer_in + 4 * hidden * out + (hidden * proj if proj else 0)  # W_ih, W_hh, W_hr
        layer_in = out
    return 6 * (n + vocab * out)


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, lstm_hidden=24),
                                dict(tie_embeddings=False, lstm_hidden=24, lstm_proj=12)],
                         ids=["tied", "untied", "proj"])
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's note on toggling mkldnn flags
def test_lstm_flops_hand_count_and_flop_counter(kw):
    cfg = lstm.LSTMConfig(vocab_size=50, block_size=16, n_layer=2, n_embd=32, **kw)
    torch.manual_seed(0)
    net = lstm.LSTMLM(cfg)
    hand = lstm_hand_flops(50, 32, 2, cfg.hidden, cfg.lstm_proj)
    assert net.flops_per_token() == hand
    if not kw:  # the 2-layer example written out: 6 * (2 * 4*32*(32+32) + 50*32) = 6 * 17984
        assert hand == 107904
    # With oneDNN on (the CPU default without projections), nn.LSTM runs as one fused kernel FlopCounterMode has
    # no formula for: it would see only the head. With oneDNN off, torch runs the LSTM as per-time-step matmuls,
    # which it counts. They match 6 * N_matmul except for one known term: at t = 0 the previous hidden state is
    # the zero initial state, which needs no gradient, so the input gradient of W_hh (2 * 4h * out FLOPs) is
    # skipped once per layer and sequence, i.e. n_layer * 2 * 4h * out / T per token.
    idx = tokens(3, 16, vocab=50)
    counter = FlopCounterMode(display=False)
    with counter, torch.backends.mkldnn.flags(enabled=False):
        _, loss = net(idx, idx)
        loss.backward()
    per_token = counter.get_total_flops() / idx.numel()
    out = cfg.lstm_proj or cfg.hidden
    assert per_token == hand - 2 * 2 * 4 * cfg.hidden * out / 16


# ------------------------------------------------------------------------------------------- norms
def test_rmsnorm_unit_rms_without_mean_subtraction():
    x = 3.0 + torch.randn(4, 5, 64, generator=torch.Generator().manual_seed(1))  # a large mean
    norm = model.RMSNorm(64)
    y = norm(x)
    rms = y.pow(2).mean(-1).sqrt()
    ms = x.pow(2).mean(-1)
    torch.testing.assert_close(rms, (ms / (ms + 1e-5)).sqrt())  # unit RMS, up to eps
    torch.testing.assert_close(y, x / (ms + 1e-5).sqrt()[..., None])  # x / rms(x): the mean is kept
    assert y.mean() > 0.9  # LayerNorm would have removed it
    assert F.layer_norm(x, (64,)).mean().abs() < 1e-5
    assert [n for n, _ in norm.named_parameters()] == ["weight"]  # no bias


def test_rmsnorm_fast_path_equals_torch_rms_norm():
    """RMSNorm's eager-CPU autograd.Function: same values and gradients as F.rms_norm / nn.RMSNorm."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 32, generator=gen, requires_grad=True)
    ours, ref = model.RMSNorm(32), nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5, generator=gen)
        ref.weight.copy_(ours.weight)
    grad = torch.randn(3, 7, 32, generator=gen)
    a = torch.autograd.grad(ours(x), (x, ours.weight), grad)
    b = torch.autograd.grad(ref(x), (x, ref.weight), grad)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(a, b)
    xd = torch.randn(2, 3, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    wd = torch.rand(8, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: model.RMSNormCPU.apply(x, w, 1e-5), (xd, wd))


def test_norm_switch_selects_the_module():
    assert all(isinstance(m, model.RMSNorm) for m in (build(norm="rmsnorm", bias=True).blocks[0].norm1,))
    assert isinstance(build(norm="layernorm").blocks[0].norm1, nn.LayerNorm)
    assert build(norm="layernorm", bias=True).blocks[0].norm1.bias is not None
    assert build(norm="layernorm", bias=False).blocks[0].norm1.bias is None


def test_post_ln_normalizes_after_the_residual_add():
    torch.manual_seed(0)
    net = build(norm_position="post", bias=True)
    block = net.blocks[0]
    with torch.no_grad():
        for p in block.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)  # biases and norm gains away from 0 and 1, to see which is applied where
        x = 5.0 + torch.randn(2, T, D)
        h = F.layer_norm(x + block.attn(x), (D,), block.norm1.weight, block.norm1.bias)
        expected = F.layer_norm(h + block.mlp(h), (D,), block.norm2.weight, block.norm2.bias)
        torch.testing.assert_close(block(x), expected)
        # pre-LN on the same weights: the residual stream is not normalized
        block.pre_norm = True
        pre = x + block.attn(block.norm1(x))
        torch.testing.assert_close(block(x), pre + block.mlp(block.norm2(pre)))
    assert net.norm_f is None and build(norm_position="pre").norm_f is not None


# ------------------------------------------------------------------------------------------- positions
def test_sinusoidal_table_matches_the_formula():
    for n, d in ((10, 16), (7, 9)):
        table = model.sinusoidal_table(n, d)
        for pos in range(n):
            for j in range(d):
                angle = pos / 10000 ** ((j - j % 2) / d)
                want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
                assert abs(table[pos, j].item() - want) < 1e-6, (pos, j)


def test_sinusoidal_and_scaled_embeddings_are_added_to_the_input():
    idx = tokens()
    for scale in (False, True):
        net = build(pos_encoding="sinusoidal", scale_embeddings=scale)
        seen = []
        net.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        net(idx)
        mult = math.sqrt(D) if scale else 1.0
        torch.testing.assert_close(seen[0], net.wte(idx) * mult + model.sinusoidal_table(T, D))
        assert not list(n for n, _ in net.named_parameters() if "wpe" in n)


def test_rotary_rotates_pairs_by_position_angles():
    head_dim, base = 8, 10000.0
    cos, sin = model.rotary_tables(6, head_dim, base)
    x = torch.randn(1, 1, 6, head_dim, generator=torch.Generator().manual_seed(0))
    y = model.apply_rotary(x, cos, sin)
    for pos in range(6):
        for i in range(head_dim // 2):
            angle = pos * base ** (-2 * i / head_dim)
            a, b = x[0, 0, pos, 2 * i].item(), x[0, 0, pos, 2 * i + 1].item()
            assert abs(y[0, 0, pos, 2 * i].item() - (a * math.cos(angle) - b * math.sin(angle))) < 1e-5
            assert abs(y[0, 0, pos, 2 * i + 1].item() - (a * math.sin(angle) + b * math.cos(angle))) < 1e-5
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_rotary_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(0)
    head_dim, n, shift = 16, 10, 7
    cos, sin = model.rotary_tables(n + shift, head_dim, 10000.0)
    q, k = torch.randn(2, 3, n, head_dim, generator=gen), torch.randn(2, 3, n, head_dim, generator=gen)

    def scores(q_from, k_from):
        rq = model.apply_rotary(q, cos[q_from:q_from + n], sin[q_from:q_from + n])
        rk = model.apply_rotary(k, cos[k_from:k_from + n], sin[k_from:k_from + n])
        return rq @ rk.transpose(-1, -2)

    torch.testing.assert_close(scores(0, 0), scores(shift, shift), atol=1e-4, rtol=1e-4)
    assert (scores(0, 0) - scores(shift, 0)).abs().max() > 0.1  # moving only the queries does change them


def test_rotary_model_is_invariant_to_shifting_every_position():
    """The whole model with RoPE (and no other position signal): shift all positions by k, same logits."""
    net = build(pos_encoding="rotary", block_size=T)
    idx = tokens()
    logits, _ = net(idx)
    shift = 11
    cos, sin = model.rotary_tables(T + shift, D // H, 10000.0)
    net.rotary_cos, net.rotary_sin = cos[shift:], sin[shift:]
    shifted, _ = net(idx)
    torch.testing.assert_close(shifted, logits, atol=1e-5, rtol=1e-5)


def test_rotary_compiled_form_equals_eager_form():
    """apply_rotary's real-arithmetic branch (used under torch.compile) computes the same rotation."""
    cos, sin = model.rotary_tables(T, 8, 10000.0)
    x = torch.randn(2, 2, T, 8, generator=torch.Generator().manual_seed(0))
    a, b = x.reshape(2, 2, T, 4, 2).unbind(-1)
    real = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    torch.testing.assert_close(model.apply_rotary(x, cos, sin), real)
    compiled = torch.compile(model.apply_rotary, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, cos, sin), real)


# ------------------------------------------------------------------------------------------- MLP and attention
def test_gated_mlp_hidden_size_matches_parameters():
    for d in (16, 64, 96, 128, 200, 768):
        cfg = GPTConfig(n_embd=d, n_head=1, activation="swiglu")
        hidden = model.mlp_hidden_size(cfg)
        assert hidden % 8 == 0
        assert abs(hidden - 2 / 3 * 4 * d) <= 4  # 2/3 of the ungated width, rounded to the nearest multiple of 8
        assert abs(3 * d * hidden - 2 * d * 4 * d) <= 3 * d * 4  # three matrices ~ the ungated two
        mlp = model.MLP(cfg)
        assert mlp.up.weight.shape == (2 * hidden, d) and mlp.down.weight.shape == (d, hidden)  # one fused up
        unmatched = model.MLP(GPTConfig(n_embd=d, n_head=1, activation="swiglu", glu_match_params=False))
        assert unmatched.up.weight.shape == (8 * d, d) and unmatched.down.weight.shape == (d, 4 * d)
        assert model.mlp_hidden_size(GPTConfig(n_embd=d, n_head=1, activation="gelu")) == 4 * d
    assert model.mlp_hidden_size(GPTConfig(n_embd=96, n_head=1, activation="relu", mlp_ratio=2.0)) == 192
    with_gate, without = build(activation="swiglu"), build(activation="gelu")
    assert abs(with_gate.num_params() / without.num_params() - 1) < 0.05


@pytest.mark.parametrize("activation", model.ACTIVATIONS)
def test_mlp_computes_its_activation(activation):
    torch.manual_seed(0)
    mlp = model.MLP(tiny(activation=activation, bias=True))
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 3, D)
    up = x @ mlp.up.weight.T + mlp.up.bias
    if activation in ("glu", "swiglu", "geglu"):
        a, b = up.chunk(2, dim=-1)
        gate = {"glu": torch.sigmoid(a), "swiglu": a * torch.sigmoid(a),
                "geglu": 0.5 * a * (1 + torch.erf(a / 2 ** 0.5))}
        h = gate[activation] * b
    else:
        h = {"relu": up.clamp(min=0), "gelu": 0.5 * up * (1 + torch.erf(up / 2 ** 0.5)),
             "silu": up * torch.sigmoid(up)}[activation]
    torch.testing.assert_close(mlp(x), h @ mlp.down.weight.T + mlp.down.bias)


def test_qk_norm_normalizes_queries_and_keys():
    net = build(qk_norm=True)
    attn = net.blocks[0].attn
    assert attn.q_norm is not None and attn.k_norm is not None
    x = 50 * torch.randn(2, T, D)  # q ~ N(0, 4): eps = 1e-5 is negligible against mean(q^2)
    seen = []
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.append(o))
    attn(x)
    torch.testing.assert_close(seen[0].pow(2).mean(-1), torch.ones(2, H, T), atol=1e-3, rtol=1e-3)
    # scale invariance: blowing up the query and key projections changes nothing with qk_norm, everything without
    for qk_norm in (True, False):
        a = build(qk_norm=qk_norm).blocks[0].attn
        before = a(x)
        with torch.no_grad():
            a.qkv.weight[:2 * D] *= 7.0
        changed = (a(x) - before).abs().max()
        assert (changed < 1e-5) if qk_norm else (changed > 1e-3)
    assert build(qk_norm=True).num_params() == build().num_params() + L * 2 * (D // H)


@pytest.mark.parametrize("scale", [None, 0.05])
def test_bf16_cpu_attention_matches_sdpa(scale):
    """The plain-ops attention that bf16 on CPU uses (faster there than torch's bf16 SDPA kernel) computes causal
    attention: outputs and gradients as fp32 SDPA's, to bf16 precision, and no worse than bf16 SDPA itself."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    grad = torch.randn(2, 3, 16, 8)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad.to(dtype))
        return [out.float()] + [t.grad.float() for t in leaves]

    exact = run(lambda *a: F.scaled_dot_product_attention(*a, is_causal=True, scale=scale), torch.float64)
    ours = run(lambda *a: model.causal_attention_bf16_cpu(*a, scale, 0.0), torch.bfloat16)
    sdpa16 = run(lambda *a: F.scaled_dot_product_attention(*a, is_causal=True, scale=scale), torch.bfloat16)
    for mine, ref, theirs in zip(ours, exact, sdpa16):
        err, their_err = (mine.double() - ref).abs().max(), (theirs.double() - ref).abs().max()
        assert err < 0.05 and err <= 2 * their_err + 1e-3, (err, their_err)
    # causal: the first position sees only itself
    torch.testing.assert_close(ours[0][:, :, 0], v[:, :, 0].bfloat16().float())


def test_attention_under_bf16_autocast_takes_the_cpu_path_and_trains():
    """Under CPU bf16 autocast the model's attention goes through causal_attention_bf16_cpu, agrees with the fp32
    model, and its causal mask (cached) works in training after a first use under inference_mode."""
    torch.manual_seed(0)
    net = build()
    idx = torch.randint(0, V, (2, T))
    calls = []
    original = model.causal_attention_bf16_cpu
    model.causal_attention_bf16_cpu = lambda *a: calls.append(1) or original(*a)
    try:
        model.causal_mask.cache_clear()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            net(idx)
        with torch.autocast("cpu", torch.bfloat16):
            logits16, loss16 = net(idx, idx, return_logits=True)
        loss16.backward()
    finally:
        model.causal_attention_bf16_cpu = original
    assert len(calls) == 2 * L
    logits32, loss32 = net(idx, idx, return_logits=True)
    assert abs(loss16.item() - loss32.item()) < 0.02
    assert (logits16.float() - logits32).abs().max() < 0.1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ------------------------------------------------------------------------------------------- init
def std_of(t):
    return t.float().std().item()


def test_transformer_init_standard_deviations():
    net = GPT(GPTConfig(vocab_size=257, block_size=64, n_layer=4, n_head=4, n_embd=256, tie_embeddings=False,
                        bias=True))
    residual = 0.02 / math.sqrt(2 * 4)
    for name, p in net.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.down.weight")):
            assert abs(std_of(p) / residual - 1) < 0.03, name
        elif p.dim() == 2:  # qkv, mlp.up, embeddings, head
            assert abs(std_of(p) / 0.02 - 1) < 0.03, name
        elif name.endswith(".bias"):
            assert torch.all(p == 0), name
        else:
            assert torch.all(p == 1), name  # norm gains
        if p.dim() == 2:
            assert abs(p.mean().item()) < 0.002, name


@pytest.mark.parametrize("scheme", ["xavier_normal", "kaiming_normal", "pytorch"])
def test_fan_based_init_standard_deviations(scheme):
    net = GPT(GPTConfig(vocab_size=257, block_size=64, n_layer=2, n_head=4, n_embd=256, tie_embeddings=False,
                        bias=True, init=scheme))
    for name, p in net.named_parameters():
        if p.dim() == 2:
            fan_out, fan_in = p.shape  # nn.Embedding (num, dim) too, as torch's init computes fans
            if scheme == "pytorch":
                # embeddings N(0, 1); Linear U(+-1/sqrt(fan_in)), whose std is 1/sqrt(3 fan_in)
                want = 1.0 if name.startswith(("wte", "wpe")) else 1 / math.sqrt(3 * fan_in)
            else:
                want = math.sqrt(2 / (fan_in + fan_out)) if scheme == "xavier_normal" else math.sqrt(2 / fan_in)
            assert abs(std_of(p) / want - 1) < 0.04, (name, std_of(p), want)
        elif name.endswith(".bias") and "norm" not in name and scheme != "pytorch":
            assert torch.all(p == 0), name
    if scheme == "pytorch":
        bound = 1 / math.sqrt(256)
        assert net.blocks[0].attn.qkv.weight.abs().max() <= bound  # uniform, not normal


def test_init_is_reproducible_from_the_seed():
    a, b, c = build(seed=5), build(seed=5), build(seed=6)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.wte.weight, c.wte.weight)


# ------------------------------------------------------------------------------------------- parameters
def test_parameter_counts_by_hand():
    # V=37, T=8, L=2, d=16, GELU, learned positions, no biases: wte 592, wpe 128, per block 2 LN gains 32 +
    # qkv 768 + proj 256 + up 1024 + down 1024 = 3104, final norm 16
    assert build().num_params() == 592 + 128 + 2 * 3104 + 16 == 6944
    assert build().num_params(non_embedding=True) == 6944 - 592 - 128
    untied = build(tie_embeddings=False)
    assert untied.num_params() == 6944 + 592  # the head is a parameter of its own
    assert untied.num_params(non_embedding=True) == 6944 + 592 - 720  # and counts as non-embedding
    # tied: the shared matrix is one parameter, counted once
    tied = build()
    assert tied.num_params() == sum(p.numel() for p in {id(p): p for p in tied.parameters()}.values())
    # biases: LN biases 2 x 16 + qkv 48 + proj 16 + up 64 + down 16 per block, final LN bias 16
    assert build(bias=True).num_params() == 6944 + 2 * 176 + 16
    assert build(pos_encoding="rotary").num_params() == 6944 - 128
    assert build(pos_encoding="rotary").num_params(non_embedding=True) == 6944 - 720


def param_shapes(net):
    return {name: tuple(p.shape) for name, p in net.named_parameters()}


# (switch, value) -> which parameter names may differ from the default model, and how
ONLY_CHANGES = {
    ("activation", "relu"): None, ("activation", "silu"): None,
    ("activation", "swiglu"): "mlp.", ("activation", "glu"): "mlp.", ("activation", "geglu"): "mlp.",
    ("pos_encoding", "rotary"): "wpe.", ("pos_encoding", "sinusoidal"): "wpe.", ("pos_encoding", "none"): "wpe.",
    ("norm", "rmsnorm"): None, ("norm_position", "post"): "norm_f.", ("tie_embeddings", False): "lm_head.",
    ("bias", True): ".bias", ("qk_norm", True): "_norm.", ("init", "xavier_normal"): None,
    ("init", "kaiming_normal"): None, ("init", "pytorch"): None, ("scale_embeddings", True): None,
    ("dropout", 0.1): None, ("rope_base", 500.0): None, ("glu_match_params", False): None,
}


@pytest.mark.parametrize("switch", list(ONLY_CHANGES), ids=lambda s: f"{s[0]}={s[1]}")
def test_every_switch_changes_only_what_it_says(switch):
    key, value = switch
    base, changed = param_shapes(build()), param_shapes(build(**{key: value}))
    allowed = ONLY_CHANGES[switch]
    differing = {n for n in set(base) | set(changed) if base.get(n) != changed.get(n)}
    if allowed is None:
        assert not differing
    else:
        assert differing and all(allowed in n for n in differing), differing
    if key in ("activation", "norm", "scale_embeddings", "dropout", "rope_base") and not differing:
        # same shapes, same seed: the very same weights, so an ablation differs in this switch alone
        for (n, p), q in zip(build().state_dict().items(), build(**{key: value}).state_dict().values()):
            assert torch.equal(p, q), n


# ------------------------------------------------------------------------------------------- invalid values
def test_model_switch_lists_agree_with_train_choices():
    assert train.CHOICES["activation"] == model.ACTIVATIONS
    assert train.CHOICES["pos_encoding"] == model.POS_ENCODINGS
    assert train.CHOICES["norm"] == model.NORMS
    assert train.CHOICES["norm_position"] == model.NORM_POSITIONS
    assert train.CHOICES["init"] == model.INITS
    assert train.CHOICES["lstm_init"] == lstm.LSTM_INITS


@pytest.mark.parametrize("key", ["activation", "pos_encoding", "norm", "norm_position", "init", "optimizer",
                                 "lr_schedule", "arch", "lstm_init", "dtype"])
def test_invalid_switch_fails_at_start_up_listing_valid_values(key):
    with pytest.raises(UserError) as e:
        train.resolve_config([f"--{key}=bogus", "--max_iters=1"])
    message = str(e.value)
    assert "bogus" in message and "\n" not in message
    for valid in train.CHOICES[key]:
        assert str(valid) in message


def test_model_refuses_unknown_switch_values_itself():
    for key in ("activation", "pos_encoding", "norm", "norm_position", "init"):
        with pytest.raises(ValueError, match="is not one of"):
            build(**{key: "bogus"})
    with pytest.raises(ValueError, match="even head size"):
        GPT(GPTConfig(n_embd=30, n_head=2, pos_encoding="rotary"))
    with pytest.raises(ValueError, match="lstm_init"):
        lstm.LSTMLM(lstm.LSTMConfig(lstm_init="bogus"))


def test_lstm_parameter_counts_and_groups():
    cfg = lstm.LSTMConfig(vocab_size=50, n_layer=2, n_embd=32)
    net = lstm.LSTMLM(cfg)
    per_layer = 4 * 32 * (32 + 32) + 2 * 4 * 32  # weights and the two bias vectors
    assert net.num_params() == 50 * 32 + 2 * per_layer
    assert net.num_params(non_embedding=True) == 2 * per_layer
    kinds = {name: (kind, layer) for name, _, kind, layer in net.param_info()}
    assert kinds["wte.weight"] == ("embedding", 0)
    assert kinds["lstm.weight_hh_l1"] == ("hidden", 2) and kinds["lstm.bias_ih_l0"] == ("vector", 1)
    # forget-gate bias: gates are (input, forget, cell, output); the two bias vectors add up to lstm_forget_bias
    b = net.lstm.bias_ih_l0 + net.lstm.bias_hh_l0
    assert torch.all(b[32:64] == 1.0) and torch.all(b[:32] == 0) and torch.all(b[64:] == 0)
