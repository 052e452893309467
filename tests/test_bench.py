"""bench.py times train.py's own loop; its MFU is tokens/s x flops_per_token / peak, as it says."""
import re

from conftest import run_script


def test_bench_reports_consistent_numbers(stdlib_data, tmp_path):
    out = run_script("bench.py", ["--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32", "--batch_size=4",
                                  "--dtype=float32", "--num_threads=1", "--steps=20", "--warmup=10",
                                  f"--data_dir={stdlib_data}", "--peak_flops=1e10"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    m = re.search(r"([\d.]+) ms/step, ([\d.]+)k tokens/s, ([\d.]+) GFLOP/s, MFU ([\d.]+)% of (\d+) GFLOP/s", out.stdout)
    assert m, out.stdout
    ms, ktok, gflops, mfu, peak = map(float, m.groups())
    assert abs(ktok * 1e3 * ms / 1e3 - 4 * 32) / (4 * 32) < 0.05  # tokens/s x s/step = tokens/step (rounded output)
    # both printed to 0.1: GFLOP/s rounding (+-0.05) moves 100 x GFLOP/s / peak by 0.5, MFU's own by 0.05
    assert peak == 10 and abs(mfu - 100 * gflops / peak) <= 0.05 + 100 * 0.05 / peak + 1e-6
    flops_per_token = 6 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32 + 257 * 32) + 12 * 32 * 32
    assert abs(gflops * 1e9 - ktok * 1e3 * flops_per_token) / (gflops * 1e9) < 0.05
