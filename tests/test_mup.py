"""
Tests for muP (model.py, train.optimizer_groups, coord_check.py): at width == mup_base_width a muP model is the
standard model (same weights for the same seed, same LRs per group, same outputs, same training steps); away from
it the rules of Yang et al. 2022 (Table 8) / microsoft/mup hold (init stds, 1/d_head attention, 1/width_mult
readout, per-group LR and weight-decay multipliers for Adam and SGD); and the coordinate check: activations stay
flat in width under muP and grow under SP.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import coord_check
import model
import train

torch.set_num_threads(1)
VOCAB = 61


def config(width, use_mup, base=32, **kw):
    return {**train.DEFAULTS, "n_embd": width, "n_head": 2, "n_layer": 2, "block_size": 8, "use_mup": use_mup,
            "mup_base_width": base, **kw}


def build(c, seed=0):
    torch.manual_seed(seed)
    return train.build_model(c, VOCAB)


def tokens(seed=0):
    return torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- base width = SP
@pytest.mark.parametrize("init,tie,optimizer", [
    ("transformer", True, "adamw"), ("transformer", False, "sgd"), ("xavier_normal", True, "adam"),
    ("kaiming_normal", False, "adamw"), ("pytorch", False, "adamw")])
def test_mup_at_the_base_width_is_the_standard_model(init, tie, optimizer):
    kw = dict(init=init, tie_embeddings=tie, optimizer=optimizer, bias=True, learning_rate=0.05 if optimizer == "sgd"
              else 3e-3, pos_encoding="learned", scale_embeddings=init == "xavier_normal", qk_norm=tie)
    sp, mup = config(32, False, **kw), config(32, True, **kw)
    a, b = build(sp), build(mup)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name  # same weights from the same seed
    groups_a, groups_b = train.optimizer_groups(a, sp), train.optimizer_groups(b, mup)
    assert [(g["lr_mult"], g["weight_decay"], len(g["params"])) for g in groups_a] == \
        [(g["lr_mult"], g["weight_decay"], len(g["params"])) for g in groups_b]
    assert {g["lr_mult"] for g in groups_b} == {1.0}
    idx = tokens()
    assert torch.equal(a(idx)[0], b(idx)[0])  # bit-identical outputs
    # and bit-identical training: three steps of the real optimizer and schedule
    for net, c in ((a, sp), (b, mup)):
        opt = train.make_optimizer(net, c, "cpu")
        for step in range(3):
            for group in opt.param_groups:
                group["lr"] = train.lr_at(step, c, 3) * group["lr_mult"]
            _, loss = net(tokens(step), tokens(step + 10))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


# ------------------------------------------------------------------------------------------- the rules away from it
def test_mup_init_rules_transformer():
    """width_mult 4: hidden matrices std / 2 (residual projections too), embeddings and readout unchanged."""
    net = build(config(256, True, base=64, n_layer=4, tie_embeddings=False))
    residual = 0.02 / math.sqrt(2 * 4)
    for name, p in net.named_parameters():
        if p.dim() < 2:
            continue
        if name.startswith(("wte", "wpe", "lm_head")):
            want = 0.02
        elif name.endswith(("attn.proj.weight", "mlp.down.weight")):
            want = residual / 2
        else:
            want = 0.02 / 2
        assert abs(p.std().item() / want - 1) < 0.04, (name, p.std().item(), want)


@pytest.mark.parametrize("init", ["xavier_normal", "kaiming_normal", "pytorch"])
def test_mup_init_rules_fan_based(init):
    """Embeddings and readout keep their base-width std; hidden matrices get their own fan-based std, which is
    already the base std / sqrt(width_mult)."""
    wide = build(config(256, True, base=64, init=init, tie_embeddings=False, block_size=64))
    base = build(config(64, False, init=init, tie_embeddings=False, block_size=64))
    sp_wide = build(config(256, False, init=init, tie_embeddings=False, block_size=64))
    for name in ("wte.weight", "wpe.weight", "lm_head.weight"):
        want = dict(base.named_parameters())[name].std().item()
        got = dict(wide.named_parameters())[name].std().item()
        assert abs(got / want - 1) < 0.06, (name, got, want)
    for name in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.down.weight"):
        want = dict(base.named_parameters())[name].std().item() / 2
        assert abs(dict(wide.named_parameters())[name].std().item() / want - 1) < 0.06, name
        assert torch.equal(dict(wide.named_parameters())[name], dict(sp_wide.named_parameters())[name])


def test_mup_attention_uses_one_over_head_dim():
    c = config(128, True, base=32)  # 2 heads: head_dim 64, base head_dim 16
    attn = build(c).blocks[0].attn
    assert attn.scale == pytest.approx(math.sqrt(16) / 64)  # = 1/sqrt(16) * (16 / 64): 1/d_head, base-matched
    x = torch.randn(2, 8, 128, generator=torch.Generator().manual_seed(0))
    q, k, v = attn.qkv(x).view(2, 8, 3, 2, 64).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) * (4 / 64) + torch.full((8, 8), float("-inf")).triu(1)
    y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(2, 8, 128)
    torch.testing.assert_close(attn(x), attn.proj(y), rtol=1e-5, atol=1e-6)
    assert build(config(128, False)).blocks[0].attn.scale is None  # SP: SDPA's 1/sqrt(d_head)
    assert build(config(32, True, base=32)).blocks[0].attn.scale is None  # muP at the base: the same


def test_mup_attention_scale_when_widths_keep_the_head_size():
    """The width presets (configs/widths/) keep the head size and add heads: mup_base_head_dim names the base
    model's head size and the scale is matched to it, not derived from this model's n_head (issue 17 (c))."""
    def scale(**kw):
        return build(config(256, True, base=64, n_head=4, **kw)).blocks[0].attn.scale
    assert scale(mup_base_head_dim=64) is None  # the base's head size: its very attention, 1/sqrt(64)
    assert scale(mup_base_head_dim=32) == pytest.approx(math.sqrt(32) / 64)  # base 64d preset: 2 heads of 32
    assert scale() == pytest.approx(math.sqrt(16) / 64)  # default: heads kept, base head size 64 // 4
    preset = ["--use_mup=True", "--n_embd=768", "--n_head=12", "--mup_base_width=64", "--max_iters=1"]
    assert train.resolve_config(preset + ["--mup_base_head_dim=32"])["mup_base_head_dim"] == 32
    with pytest.raises(train.UserError, match="set mup_base_head_dim"):  # 64 / 12 heads: only with the key
        train.resolve_config(preset)


def test_mup_adamw_decays_hidden_matrices_as_the_base_width_does():
    """Issue 17 (b): with zero gradients an AdamW step only decays, p <- p (1 - lr x wd). Under muP the hidden
    matrices' lr is lr / width_mult, so their weight decay is wd x width_mult: the same factor at every width."""
    for width in (32, 128):  # base width, and width_mult 4
        c = config(width, True, base=32, optimizer="adamw", weight_decay=0.1, learning_rate=1e-2)
        net = build(c)
        opt = train.make_optimizer(net, c, "cpu")
        for group in opt.param_groups:
            group["lr"] = c["learning_rate"] * group["lr_mult"]
        before = {name: p.detach().clone() for name, p in net.named_parameters()}
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for name, p, kind, _ in net.param_info():
            factor = 1 - 1e-2 * 0.1 if kind == "hidden" else 1.0  # tied embedding and vectors: not decayed
            torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize("tie", [True, False])
def test_mup_readout_multiplier(tie):
    """Logits = head(final hidden state) / width_mult (times mup_output_mult). Blocks made identities (their
    output projections zeroed) so the logits can be written down by hand."""
    for use_mup, mult in ((True, 0.25), (False, 1.0)):
        net = build(config(128, use_mup, base=32, tie_embeddings=tie, mup_output_mult=2.0))
        with torch.no_grad():
            for block in net.blocks:
                block.attn.proj.weight.zero_()
                block.mlp.down.weight.zero_()
        idx = tokens()
        h = net.norm_f(net.wte(idx) + net.wpe.weight[:8])
        head = net.wte.weight if tie else net.lm_head.weight
        want = (h @ head.T) * (mult * 2.0 if use_mup else 1.0)  # mup_output_mult only applies with muP
        torch.testing.assert_close(net(idx)[0], want, rtol=1e-5, atol=1e-6)


def test_mup_embedding_multiplier_is_width_independent():
    """scale_embeddings (Vaswani et al.'s sqrt(d_model)) under muP: sqrt(mup_base_width) at every width, or the
    embedding output would grow as sqrt(width)."""
    assert build(config(128, False, scale_embeddings=True)).embed_mult == pytest.approx(math.sqrt(128))
    assert build(config(128, True, base=32, scale_embeddings=True)).embed_mult == pytest.approx(math.sqrt(32))
    assert build(config(128, True, base=32, scale_embeddings=True, mup_input_mult=3.0)).embed_mult == \
        pytest.approx(3 * math.sqrt(32))


def test_mup_lr_and_weight_decay_multipliers_per_group():
    width_mult = 4.0
    for optimizer in ("adamw", "adam", "sgd"):
        c = config(128, True, base=32, optimizer=optimizer, tie_embeddings=False, bias=True, weight_decay=0.1)
        net = build(c)
        mult = {id(p): g["lr_mult"] for g in train.optimizer_groups(net, c) for p in g["params"]}
        for name, p, kind, _ in net.param_info():
            if optimizer == "sgd":  # hidden: fan_in and fan_out grow together, base lr; the rest lr * width_mult
                want = 1.0 if kind == "hidden" else width_mult
            else:  # Adam: hidden lr / width_mult, embeddings, vectors and the readout the base lr
                want = 1 / width_mult if kind == "hidden" else 1.0
            assert mult[id(p)] == want, (optimizer, name, kind)
            assert model.mup_lr_mult(kind, optimizer, 1.0) == 1.0
        kinds = {kind for _, _, kind, _ in net.param_info()}
        assert kinds == {"embedding", "hidden", "vector", "readout"}
    # weight decay: lr * wd per parameter independent of width (microsoft/mup's default for MuAdam/MuSGD)
    for kind in ("embedding", "hidden", "vector", "readout"):
        for optimizer in ("adamw", "adam", "sgd"):
            lr_wd = model.mup_lr_mult(kind, optimizer, width_mult) * model.mup_wd_mult(kind, optimizer, width_mult)
            assert lr_wd == pytest.approx(1.0), (kind, optimizer)
            assert model.mup_wd_mult(kind, optimizer, 1.0) == 1.0


def test_tied_embedding_follows_one_rule():
    """The shared matrix is both the input embedding and the readout: in this formulation both roles have the
    same LR rule and a width-independent init, so the tied model needs no compromise."""
    for optimizer in ("adamw", "sgd"):
        for width_mult in (0.5, 4.0):
            assert model.mup_lr_mult("embedding", optimizer, width_mult) == \
                model.mup_lr_mult("readout", optimizer, width_mult)
    tied = build(config(256, True, base=64, tie_embeddings=True))
    assert abs(tied.wte.weight.std().item() / 0.02 - 1) < 0.04


def test_mup_config_is_checked():
    with pytest.raises(ValueError, match="divisible"):
        model.GPT(model.GPTConfig(n_embd=64, n_head=4, use_mup=True, mup_base_width=30))


# ------------------------------------------------------------------------------------------- coordinate check
def test_coordinate_check_flat_under_mup_growing_under_sp():
    """Widths 64..512 (8x), 2 layers, 4 heads, AdamW lr 1e-2, 3 steps on random tokens (batch 4 x 32), muP base
    width 64. Measured growth widest / narrowest at the last step, seeds 0-7 (this test runs seed 0):
      muP: embedding 1.00-1.03, attention 0.47-1.56, MLP 0.45-0.83, logits 0.61-1.57
      SP:  embedding 1.02-1.06, attention 25-76,     MLP 29-69,     logits 4.6-11.9
    Bound: a factor of 3 either way. muP stays inside it with a 1.35x margin on its worst seed; SP's attention,
    MLP and logits leave it by 1.5x or more (the constant-std GPT-2 init already grows them at step 1, and Adam's
    width-independent per-coordinate updates add up coherently over the width). SP's embedding output does not
    grow (Adam moves each embedding row by the same amount at every width), which the check shows too."""
    args, extra = coord_check.parse_args(["--widths", "64,128,256,512", "--steps", "3", "--seeds", "1",
                                          "--batch_size", "4", "--block_size", "32"])
    result = coord_check.collect(args, extra)
    for kind in coord_check.KINDS:  # at the base width muP is SP: the same numbers, step by step
        assert np.array_equal(result["sp"][kind][:, 0], result["mup"][kind][:, 0])
    ratios = coord_check.growth(result)
    bound = 3.0
    for kind, r in ratios["mup"].items():
        assert 1 / bound < r < bound, ("mup", kind, r)
    for kind in ("attention", "mlp", "logits"):
        assert ratios["sp"][kind] > bound, ("sp", kind, ratios["sp"][kind])
    assert 1 / bound < ratios["sp"]["embedding"] < bound


def test_coord_check_command_writes_plot_and_json(tmp_path, capsys):
    out = tmp_path / "cc"
    code = coord_check.main(["--widths", "32,64", "--steps", "2", "--seeds", "1", "--n_head", "2", "--batch_size",
                             "2", "--block_size", "16", "--out", str(out), "--activation=swiglu"])
    assert code == 0
    assert "widest/narrowest" in capsys.readouterr().out
    data = json.loads((out / "coord_check.json").read_text())
    assert np.array(data["mup"]["logits"]).shape == (2, 2)  # (steps, widths)
    assert (out / "coord_check.png").stat().st_size > 10000
    for argv, message in ((["--widths", "64"], "at least two widths"),
                          (["--widths", "60,90", "--n_head", "4"], "not divisible"),
                          (["--widths", "32,64", "--n_embd=48"], "set by the check"),
                          (["--widths", "32,64", "--activation=swish"], "activation='swish' is not one of")):
        assert coord_check.main(argv + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
