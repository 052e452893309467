"""
Tests for the grokking template (configs/grokking/template*.py, README "Task datasets"): the preset builds the
template's model (post-LN blocks with a final LayerNorm, untied head with a bias over the answer tokens only,
biases, PyTorch init; checked against a reference built from torch.nn.MultiheadAttention), decays every parameter
with betas (0.9, 0.98), the layer-wise presets give each group its absolute LR, batches drawn with replacement and
the fixed validation subset are what they say and deterministic, and a tiny template run works end to end.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare
import results
import train
from configurator import UserError
from conftest import ROOT

torch.set_num_threads(1)
TEMPLATE = os.path.join(ROOT, "configs", "grokking", "template.py")
LAYERWISE = {"1e-4_1e-3_1e-2": (1e-4, 1e-3, 1e-2), "5e-4_1e-3_2e-3": (5e-4, 1e-3, 2e-3),
             "7e-4_1.5e-3_3e-3": (7e-4, 1.5e-3, 3e-3), "8e-4_2e-3_3e-3": (8e-4, 2e-3, 3e-3)}


def template_model(*args, vocab_size=99, answers=97):
    config = train.resolve_config([TEMPLATE, *args])
    config["block_size"] = 4  # run_training sets it from the rows: [a, op, b, =] predicts c
    torch.manual_seed(0)
    return config, train.build_model(config, vocab_size, answers)


def reference_logits(net, idx):
    """The template's forward pass written with torch.nn.MultiheadAttention and our model's weights:
    x = LN1(x + attn(x)), x = LN2(x + mlp(x)) per block, then a final LayerNorm and the head, at the last position."""
    T = idx.shape[1]
    x = net.wte(idx) + net.wpe.weight[:T]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for block in net.blocks:
        mha = nn.MultiheadAttention(x.shape[-1], block.attn.n_head, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(block.attn.qkv.weight)
            mha.in_proj_bias.copy_(block.attn.qkv.bias)
            mha.out_proj.weight.copy_(block.attn.proj.weight)
            mha.out_proj.bias.copy_(block.attn.proj.bias)
        x = block.norm1(x + mha(x, x, x, attn_mask=mask, need_weights=False)[0])
        x = block.norm2(x + block.mlp.down(F.gelu(block.mlp.up(x))))
    return net.lm_head(net.norm_f(x))[:, -1]


def test_template_builds_the_post_ln_model_with_final_norm_and_answer_head():
    config, net = template_model()
    assert [b.pre_norm for b in net.blocks] == [False, False] and isinstance(net.norm_f, nn.LayerNorm)
    assert net.lm_head.weight.shape == (97, 128) and net.lm_head.bias is not None  # untied, answers only
    assert net.lm_head.weight.data_ptr() != net.wte.weight.data_ptr() and net.wpe.weight.shape == (4, 128)
    linears = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.LayerNorm))]
    assert len(linears) == 2 * 6 + 2 and all(m.bias is not None for m in linears)
    assert abs(net.wte.weight.std().item() - 1) < 0.05  # PyTorch's N(0, 1) embeddings, as the template's
    idx = torch.tensor([[3, 97, 5, 98], [96, 97, 1, 98]])
    with torch.no_grad():
        logits, _ = net(idx)
        assert logits.shape == (2, 4, 97)
        torch.testing.assert_close(logits[:, -1], reference_logits(net, idx), atol=1e-5, rtol=1e-5)
    # the head's FLOPs count only the answers it scores
    assert train.build_model(config, 99).flops_per_token() - net.flops_per_token() == 6 * 2 * 128


def test_template_decays_every_parameter_with_its_betas_and_schedule():
    config, net = template_model()
    optimizer = train.make_optimizer(net, config, "cpu")
    in_groups = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(in_groups) == len(list(net.parameters()))
    assert {(g["weight_decay"], g["lr_mult"], g["betas"]) for g in optimizer.param_groups} == {(0.5, 1.0, (0.9, 0.98))}
    assert config["grad_clip"] == 0 and config["dtype"] == "float32"
    lr = [train.lr_at(s, config, 7500) for s in (0, 48, 49, 50, 7499)]
    assert lr == pytest.approx([1e-3 / 50, 49e-3 / 50, 1e-3, 1e-3, 1e-3])  # 50 warmup steps, then constant
    # the LM default is unchanged: decay on matrices only
    lm = train.resolve_config(["--max_iters=1"])
    groups = train.optimizer_groups(train.build_model(lm, 257), lm)
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}


@pytest.mark.parametrize("name", list(LAYERWISE))
def test_layerwise_presets_give_each_group_its_absolute_lr(name):
    path = os.path.join(ROOT, "configs", "grokking", f"template_lr_{name}.py")
    config, net = template_model(path)
    lr_of = {id(p): config["learning_rate"] * g["lr_mult"] for g in train.optimizer_groups(net, config)
             for p in g["params"]}
    emb, lower, upper = LAYERWISE[name]
    for n, p in net.named_parameters():
        want = emb if n.startswith(("wte.", "wpe.")) else lower if n.startswith("blocks.0.") else upper
        assert lr_of[id(p)] == pytest.approx(want, rel=1e-12), n  # upper: block 1, final norm and head
    assert config["weight_decay"] == 0.5 and config["max_iters"] == 7500


def test_answer_head_needs_answers_that_come_first(tmp_path):
    for source, options, answers in (("modular", dict(op="div", p=5), 5), ("permutation", dict(n=3), 6)):
        folder = prepare.prepare(source, data_dir=str(tmp_path), **options)
        data = prepare.load_dataset(str(tmp_path), os.path.basename(folder))
        assert train.answer_vocab_size(data, source) == answers == data["meta"]["vocab_size"] - 2  # not op, =
    rows = np.array([[0, 3, 1, 4, 2], [1, 3, 1, 4, 0], [2, 3, 2, 4, 1]])
    meta = {"kind": "rows", "supervised_positions": [4]}
    assert train.answer_vocab_size({"meta": meta, "train": rows[:2], "val": rows[2:]}, "t") == 3
    shifted = rows + np.array([0, 0, 0, 0, 5])  # answers 5..7, as MNIST's labels sit after the pixels
    with pytest.raises(UserError, match="first token ids"):
        train.answer_vocab_size({"meta": meta, "train": shifted, "val": shifted}, "t")
    with pytest.raises(UserError, match="token dataset"):
        train.answer_vocab_size({"meta": {"kind": "tokens"}}, "stdlib")
    with pytest.raises(UserError, match="untied head"):
        train.resolve_config(["--head_bias=True", "--max_iters=1"])


def numbered_rows(n):
    """Rows [i, op, i, =, i % 7]: the first token names the row."""
    i = np.arange(n)
    return np.stack([i, np.full(n, 1000), i, np.full(n, 1001), i % 7], axis=1)


def test_batches_with_replacement_are_uniform_and_seeded():
    rows = numbered_rows(10)
    draw = lambda seed: train.RowBatches(rows, [4], seed, replacement=True).next(1000)
    x, y = draw(1)
    counts = np.bincount(x[:, 0].numpy(), minlength=10)
    assert counts.sum() == 1000 and counts.min() > 60 and counts.max() < 140  # ~100 each: uniform
    assert (y[:, :3] == -1).all() and torch.equal(y[:, 3], torch.from_numpy(rows[x[:, 0].numpy(), 4]))
    assert torch.equal(draw(1)[0], x) and not torch.equal(draw(2)[0], x)  # deterministic given the seed
    batches = train.RowBatches(rows, [4], 1, replacement=True)
    assert any(len(set(batches.next(10)[0][:, 0].tolist())) < 10 for _ in range(5))  # repeats within a batch
    epoch = train.RowBatches(rows, [4], 1).next(10)[0][:, 0]  # the default: every row once per epoch
    assert sorted(epoch.tolist()) == list(range(10))


def test_fixed_validation_subset():
    val = numbered_rows(1000)
    meta = {"kind": "rows", "supervised_positions": [4]}
    config = {"eval_batch_size": 256, "eval_rows": 600}
    ids = lambda batches: torch.cat([x[:, 0] for x, _ in batches]).tolist()
    batches = train.validation_batches(meta, val, config)
    assert [len(x) for x, _ in batches] == [256, 256, 88]
    subset = ids(batches)
    assert len(set(subset)) == 600 and subset != list(range(600))  # distinct rows, a random subset
    assert ids(train.validation_batches(meta, val, config)) == subset  # the same one every time
    for everything in (0, 1000, 5000):
        assert ids(train.validation_batches(meta, val, {**config, "eval_rows": everything})) == list(range(1000))


def test_tiny_template_run_end_to_end(tmp_path):
    prepare.prepare("modular", data_dir=str(tmp_path), op="add", p=11, train_frac=0.6, seed=0)
    args = [TEMPLATE, "--dataset=modular_add_p11_frac0.6", f"--data_dir={tmp_path}", f"--results_dir={tmp_path}",
            "--n_embd=32", "--n_head=2", "--batch_size=64", "--max_iters=40", "--warmup_iters=5",
            "--learning_rate=3e-3", "--eval_rows=32", "--num_threads=1", "--log_interval=20"]
    runs = []
    for _ in range(2):
        config = train.resolve_config(args + ["--overwrite=True"])
        assert train.train(config) == "completed"
        runs.append(results.read_run(train.run_folder(config)))
    run = runs[0]
    rows = run["metrics"]
    assert [r["step"] for r in rows] == list(range(10, 41, 10))  # evaluated every 10 updates
    assert run["config"]["derived"]["head_vocab_size"] == 11 and run["config"]["derived"]["vocab_size"] == 13
    assert all(float(r["val_acc"] * 32).is_integer() for r in rows)  # accuracy over the 32-row subset
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["train_acc"] > rows[0]["train_acc"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]
    assert strip(runs[1]["metrics"]) == strip(rows)  # the same command, the same numbers
