"""
Tests for train.py's learning-rate schedules (lr_at) and optimizers (make_optimizer, optimizer_groups): the
schedules hit their values at chosen steps (warmup_iters and warmup_frac), SGD with momentum and Nesterov and Adam
vs AdamW match hand-written updates for two steps, weight decay spares biases, norms and embeddings, and the
per-group lr_mult (muP x layer-wise) is what the training loop multiplies in.
"""
import math

import pytest
import torch

import train
from model import GPT, GPTConfig

torch.set_num_threads(1)


def config(**kw):
    return {**train.DEFAULTS, **kw}


# ------------------------------------------------------------------------------------------- schedules
def lrs(total, **kw):
    c = config(learning_rate=1.0, **kw)
    return [train.lr_at(step, c, total) for step in range(total + 20)]


def test_linear_warmup_with_warmup_iters():
    lr = lrs(110, lr_schedule="cosine", warmup_iters=10, min_lr=0.1)
    assert lr[0] == pytest.approx(0.1)  # step 0 is the first of 10 warmup steps
    assert lr[4] == pytest.approx(0.5)
    assert lr[9] == pytest.approx(1.0)  # the peak at the end of warmup


def test_warmup_frac_of_the_run():
    lr = lrs(200, lr_schedule="constant", warmup_iters=0, warmup_frac=0.1)  # 20 warmup steps
    assert lr[9] == pytest.approx(0.5)
    assert lr[19] == pytest.approx(1.0)
    assert lr[20] == lr[150] == 1.0
    assert lrs(200, lr_schedule="constant", warmup_iters=5, warmup_frac=0.1)[4] == 1.0  # warmup_iters wins


def test_cosine_hits_its_values():
    lr = lrs(110, lr_schedule="cosine", warmup_iters=10, min_lr=0.1)  # decay over steps 10..109 (n = 11..110)
    assert lr[59] == pytest.approx(0.1 + 0.5 * 0.9)  # halfway: n - warmup = 50 of 100
    assert lr[34] == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi / 4)) * 0.9)  # a quarter of the way
    assert lr[109] == pytest.approx(0.1)  # the last step reaches min_lr
    assert lr[125] == pytest.approx(0.1)  # and stays there
    assert all(a >= b for a, b in zip(lr[9:], lr[10:]))  # never increases after warmup


def test_linear_decay_hits_its_values_and_min_lr_default():
    lr = lrs(110, lr_schedule="linear", warmup_iters=10, min_lr=0.1)
    assert lr[34] == pytest.approx(0.1 + 0.75 * 0.9)
    assert lr[59] == pytest.approx(0.55)
    assert lr[109] == pytest.approx(0.1)
    assert lrs(110, lr_schedule="linear", warmup_iters=10, min_lr=None)[109] == pytest.approx(0.1)  # lr / 10
    assert lrs(110, lr_schedule="linear", warmup_iters=10, min_lr=0.0)[109] == 0.0


def test_lr_decay_iters_shorter_than_the_run():
    lr = lrs(200, lr_schedule="cosine", warmup_iters=10, lr_decay_iters=110, min_lr=0.0)
    assert lr[59] == pytest.approx(0.5)
    assert lr[109] == pytest.approx(0.0, abs=1e-12) and lr[180] == pytest.approx(0.0, abs=1e-12)


def test_inverse_sqrt_hits_its_values():
    lr = lrs(400, lr_schedule="inverse_sqrt", warmup_iters=10)
    assert lr[9] == pytest.approx(1.0)  # peak at the end of warmup
    assert lr[39] == pytest.approx(0.5)  # n = 40: sqrt(10 / 40)
    assert lr[159] == pytest.approx(0.25)  # n = 160: sqrt(10 / 160)
    assert lr[4] == pytest.approx(0.5)  # warmup
    no_warmup = lrs(100, lr_schedule="inverse_sqrt", warmup_iters=0, warmup_frac=0.0)
    assert no_warmup[0] == 1.0 and no_warmup[3] == pytest.approx(0.5)  # lr / sqrt(step + 1)


def test_constant_is_constant_after_warmup():
    lr = lrs(100, lr_schedule="constant", warmup_iters=4)
    assert lr[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert set(lr[4:]) == {1.0}


# ------------------------------------------------------------------------------------------- optimizers
class Pair(torch.nn.Module):
    """One matrix (decayed) and one bias vector (not), with train.py's param_info interface."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 3, generator=gen))
        self.b = torch.nn.Parameter(torch.randn(4, generator=gen))

    def param_info(self):
        yield "w", self.w, "hidden", 1
        yield "b", self.b, "vector", 1


def grads_for(step):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(4, 3, generator=gen), torch.randn(4, generator=gen)


def run_two_steps(**kw):
    """Two optimizer steps of make_optimizer with fixed gradients, the group LRs set as the training loop sets
    them; returns the parameters after each step."""
    c = config(n_layer=1, **kw)
    net = Pair()
    opt = train.make_optimizer(net, c, "cpu")
    history = []
    for step in range(2):
        for group in opt.param_groups:
            group["lr"] = c["learning_rate"] * group["lr_mult"]
        net.w.grad, net.b.grad = grads_for(step)
        opt.step()
        history.append((net.w.detach().clone(), net.b.detach().clone()))
    return history


def start():
    net = Pair()
    return [net.w.detach().clone().double(), net.b.detach().clone().double()]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_hand_update(nesterov):
    lr, mom, wd = 0.1, 0.9, 0.01
    got = run_two_steps(optimizer="sgd", learning_rate=lr, momentum=mom, nesterov=nesterov, weight_decay=wd)
    params, decays = start(), [wd, 0.0]  # the matrix is decayed, the bias is not
    bufs = [None, None]
    for step in range(2):
        for i, g in enumerate(grads_for(step)):
            g = g.double() + decays[i] * params[i]  # SGD's weight decay is L2 in the gradient
            bufs[i] = g.clone() if bufs[i] is None else mom * bufs[i] + g  # heavy ball, no dampening
            direction = g + mom * bufs[i] if nesterov else bufs[i]
            params[i] = params[i] - lr * direction
        torch.testing.assert_close(got[step][0].double(), params[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got[step][1].double(), params[1], rtol=1e-6, atol=1e-7)


def hand_adam(decoupled, lr=0.01, b1=0.9, b2=0.95, eps=1e-8, wd=0.1):
    params, decays = start(), [wd, 0.0]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    history = []
    for t in range(1, 3):
        for i, g in enumerate(grads_for(t - 1)):
            g = g.double()
            if decoupled:
                params[i] = params[i] * (1 - lr * decays[i])  # AdamW: shrink the weights, apart from the gradient
            else:
                g = g + decays[i] * params[i]  # Adam: L2 decay coupled into the gradient, then normalized
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            params[i] = params[i] - lr * m_hat / (v_hat.sqrt() + eps)
        history.append([p.clone() for p in params])
    return history


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw_match_hand_updates(name):
    got = run_two_steps(optimizer=name, learning_rate=0.01, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    want = hand_adam(decoupled=name == "adamw")
    for step in range(2):
        torch.testing.assert_close(got[step][0].double(), want[step][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got[step][1].double(), want[step][1], rtol=1e-5, atol=1e-7)


def test_adam_and_adamw_differ_exactly_by_how_decay_enters():
    adam = run_two_steps(optimizer="adam", learning_rate=0.01, weight_decay=0.1)
    adamw = run_two_steps(optimizer="adamw", learning_rate=0.01, weight_decay=0.1)
    assert (adam[1][0] - adamw[1][0]).abs().max() > 1e-5  # the decayed matrix differs
    torch.testing.assert_close(adam[1][1], adamw[1][1], rtol=0, atol=0)  # the undecayed bias does not
    same_a = run_two_steps(optimizer="adam", learning_rate=0.01, weight_decay=0.0)
    same_w = run_two_steps(optimizer="adamw", learning_rate=0.01, weight_decay=0.0)
    torch.testing.assert_close(same_a[1][0], same_w[1][0], rtol=0, atol=0)  # without decay: the same optimizer


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=37, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True,
                                   tie_embeddings=False, qk_norm=True), **kw}))


@pytest.mark.parametrize("tie", [False, True])
def test_no_weight_decay_on_biases_norms_and_embeddings(tie):
    net = tiny_gpt(tie_embeddings=tie)
    c = config(n_layer=2, optimizer="adamw", learning_rate=0.1, weight_decay=0.5)
    groups = train.optimizer_groups(net, c)
    seen = [p for g in groups for p in g["params"]]
    assert len(seen) == len({id(p) for p in seen}) == len(list(net.parameters()))  # each parameter once
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in net.named_parameters():
        should = p.dim() == 2 and not name.startswith(("wte.", "wpe."))
        assert (id(p) in decayed) == should, name
    # behaviour: one AdamW step with zero gradients only decays, and only the matrices
    opt = train.make_optimizer(net, c, "cpu")
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for group in opt.param_groups:
        group["lr"] = c["learning_rate"] * group["lr_mult"]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in net.named_parameters():
        factor = 1 - 0.1 * 0.5 if id(p) in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0)


def test_lr_mult_composes_layerwise_multipliers():
    net = tiny_gpt()
    c = config(n_layer=2, layer_lr_ramp=0.5, layer_lr_mults=[2.0, 1.0, 3.0])
    mult = {id(p): g["lr_mult"] for g in train.optimizer_groups(net, c) for p in g["params"]}
    for name, p, kind, layer in net.param_info():
        base = 2.0 if layer == 0 else 1.0 if layer <= 1 else 3.0  # embeddings, lower half, upper half + head
        assert mult[id(p)] == pytest.approx(0.5 ** layer * base), name
    assert {g["lr_mult"] for g in train.optimizer_groups(net, config(n_layer=2))} == {1.0}


def test_make_optimizer_types_and_hyperparameters():
    net = tiny_gpt()
    sgd = train.make_optimizer(net, config(optimizer="sgd", momentum=0.8, nesterov=True), "cpu")
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"]
    adam = train.make_optimizer(net, config(optimizer="adam", beta1=0.8, beta2=0.9, eps=1e-6), "cpu")
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.9) and adam.defaults["eps"] == 1e-6
    assert type(train.make_optimizer(net, config(optimizer="adamw"), "cpu")) is torch.optim.AdamW
