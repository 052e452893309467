"""
Tests for the fused output head + cross-entropy (model.linear_cross_entropy, used by GPT and LSTMLM when
fused_loss=True): the loss and every gradient equal the plain path (full logits, F.cross_entropy) to fp32 rounding
for both architectures, tied and untied, with a head bias, muP's readout multiplier, a head over part of the
vocabulary and masked targets; the edge cases of F.cross_entropy; no op ever holds the full logits; and 200 steps
of training follow the plain path's loss curve to 1e-4.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import lstm
import model
import train

torch.set_num_threads(1)
V, B, T = 300, 2, 23  # 46 rows: blocks of 7 rows (the last 4) in passes of 3 (the last 1), with small_chunks


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setitem(model.FUSED_BLOCK_BYTES, "cpu", 7 * V * 4)  # fp32 logits of 7 rows (bf16: 14)
    monkeypatch.setitem(model.FUSED_PASS_BYTES, "cpu", 3 * V * 4)


CASES = {
    "transformer tied": dict(arch="transformer"),
    "transformer untied": dict(arch="transformer", tie_embeddings=False),
    "transformer untied, head bias": dict(arch="transformer", tie_embeddings=False, head_bias=True),
    "transformer muP (readout x 1.5 / 2)": dict(arch="transformer", use_mup=True, mup_base_width=16, mup_output_mult=1.5),
    "transformer tied, head over 250 ids": dict(arch="transformer", head_vocab_size=250),
    "lstm tied": dict(arch="lstm"),
    "lstm untied": dict(arch="lstm", tie_embeddings=False),
}


def build(fused, arch="transformer", n_embd=32, **kw):
    torch.manual_seed(0)
    if arch == "lstm":
        return lstm.LSTMLM(lstm.LSTMConfig(vocab_size=V, block_size=T, n_layer=1, n_embd=n_embd, fused_loss=fused,
                                           **kw))
    return model.GPT(model.GPTConfig(vocab_size=V, block_size=T, n_layer=1, n_head=2, n_embd=n_embd,
                                     fused_loss=fused, **kw))


def batch(n_out=V, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx, targets = torch.randint(V, (B, T), generator=g), torch.randint(n_out, (B, T), generator=g)
    targets[0, ::3] = -1  # masked positions, as task rows have them
    targets[1, 5:] = -1
    return idx, targets


def loss_and_grads(net, idx, targets):
    _, loss = net(idx, targets)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in net.named_parameters()}


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_equal_the_plain_path(case, small_chunks):
    kw = CASES[case]
    plain, fused = build(False, **kw), build(True, **kw)
    idx, targets = batch(kw.get("head_vocab_size") or V)
    loss_p, grads_p = loss_and_grads(plain, idx, targets)
    loss_f, grads_f = loss_and_grads(fused, idx, targets)
    assert abs(loss_f.item() - loss_p.item()) <= 2e-6 * loss_p.item()
    assert grads_f.keys() == grads_p.keys()
    for name in grads_p:
        scale = grads_p[name].abs().max().item()
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-5, atol=1e-5 * scale, msg=name)
    if kw.get("head_bias"):
        assert grads_p["lm_head.bias"].abs().max() > 0  # the bias gradient is compared, not trivially zero
    # evaluation (no grad): the same loss, no logits; asked for, the logits and the plain path's loss
    with torch.no_grad():
        logits, loss = fused(idx, targets)
        logits_asked, loss_asked = fused(idx, targets, return_logits=True)
    assert logits is None and loss.grad_fn is None and abs(loss.item() - loss_p.item()) <= 2e-6 * loss_p.item()
    assert logits_asked.shape == (B, T, kw.get("head_vocab_size") or V) and loss_asked.item() == loss_p.item()
    assert fused(idx)[0].shape == logits_asked.shape  # without targets: the logits, as before


def test_bf16_autocast_agrees_with_the_plain_path(small_chunks):
    """Under bf16 autocast both paths take the logits from a bf16 matmul and their log-sum-exp in fp32: the losses
    agree to fp32 rounding of near-identical logits, the gradients to bf16 rounding."""
    plain, fused = build(False), build(True)
    idx, targets = batch()
    with torch.autocast("cpu", torch.bfloat16):
        loss_p, grads_p = loss_and_grads(plain, idx, targets)
        loss_f, grads_f = loss_and_grads(fused, idx, targets)
    assert abs(loss_f.item() - loss_p.item()) < 2e-3
    for name in grads_p:
        err = (grads_f[name] - grads_p[name]).norm() / grads_p[name].norm()
        assert err < 2e-2, (name, err.item())


def test_the_edge_cases_of_cross_entropy():
    """Where the target's probability underflows fp32 (a loss of ~400), where every target is ignored (nan loss,
    zero gradients, as F.cross_entropy), and the incoming gradient scales the stored ones (train.py's loss / accum)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(10, 8, generator=g) * 30, torch.randn(V, 8, generator=g)
    targets = torch.randint(V, (10,), generator=g)
    for t in (targets, torch.full((10,), -1)):
        want = F.cross_entropy(x @ w.t(), t, ignore_index=-1)
        got, grads = model.chunked_cross_entropy(x, w, None, t, torch.float32, 4, 3, True)
        if t[0] == -1:
            assert want.isnan() and got.isnan() and all((grad == 0).all() for grad in grads if grad is not None)
        else:
            assert want > 100 and got.item() == pytest.approx(want.item(), rel=1e-6)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    (0.25 * model.linear_cross_entropy(xr, wr, None, targets)).backward()
    xp, wp = x.clone().requires_grad_(), w.clone().requires_grad_()
    (0.25 * F.cross_entropy(xp @ wp.t(), targets)).backward()
    torch.testing.assert_close(xr.grad, xp.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(wr.grad, wp.grad, rtol=1e-5, atol=1e-7)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns with a dimension of V (the LSTM's workspace is
    larger than anything here, and has nothing to do with the vocabulary)."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and V in t.shape:
                self.most = max(self.most, t.numel())
        return out


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_the_full_logits_are_never_formed(arch, small_chunks):
    idx, targets = batch()
    sizes = {}
    for fused in (False, True):
        net = build(fused, arch, n_embd=8)  # narrow: the weights (V x 8) are smaller than the logits (46 x V)
        with LargestTensor() as seen:
            _, loss = net(idx, targets)
            loss.backward()
        sizes[fused] = seen.most
    assert sizes[False] >= B * T * V  # the plain path holds them (so the probe sees them)
    assert sizes[True] <= 8 * V  # the fused path: the weights, and the logits of one block of 7 rows


def test_logits_that_fit_in_one_block_take_the_plain_path():
    """At the default chunk sizes this model's logits (46 x 300) fit in one block: nothing to save, so the fused
    setting computes exactly the plain loss (and still returns no logits)."""
    idx, targets = batch()
    logits, loss = build(True)(idx, targets)
    assert logits is None and torch.equal(loss, build(False)(idx, targets)[1])


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_200_training_steps_follow_the_plain_loss_curve(arch, monkeypatch):
    """train.py's model, optimizer and fused_loss key, fp32, a vocabulary of 4096 (the head is most of the model)
    and Zipf-distributed synthetic tokens, so the loss falls far: every step's loss within 1e-4 of the plain
    path's (they differ by 2e-6 here; at lr 3e-3 the Transformer passes through a stretch where any fp32 rounding
    difference grows, to 1e-4 by step 200). Blocks of 16 rows in passes of 8 (64 rows a step)."""
    monkeypatch.setitem(model.FUSED_BLOCK_BYTES, "cpu", 16 * 4096 * 4)
    monkeypatch.setitem(model.FUSED_PASS_BYTES, "cpu", 8 * 4096 * 4)
    g = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, 4097, dtype=torch.float64)
    tokens = torch.multinomial(1 / ranks, 200 * 4 * 17, replacement=True, generator=g).view(200, 4, 17)
    curves = {}
    for fused in (True, False):
        config = train.resolve_config([f"--arch={arch}", "--n_layer=1", "--n_embd=16", "--n_head=2",
                                       "--block_size=16", f"--fused_loss={fused}"])
        torch.manual_seed(0)
        net = train.build_model(config, 4096)
        assert net.config.fused_loss is fused
        optimizer = train.make_optimizer(net, config, "cpu")
        curves[fused] = []
        for rows in tokens:
            _, loss = net(rows[:, :-1], rows[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config["grad_clip"], foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            curves[fused].append(loss.item())
    assert curves[False][0] - curves[False][-1] > 1.5  # it learned (from ln 4096 = 8.3)
    assert max(abs(a - b) for a, b in zip(curves[True], curves[False])) < 1e-4
