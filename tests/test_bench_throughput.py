"""experiments/bench_throughput.py: one case measured end to end on a short rollout, and its report row."""

from tests.conftest import load_experiment


def test_default_case_measures_raw_rollout_training_and_the_update_bound(tmp_path):
    bench = load_experiment("bench_throughput")
    case = bench.CASES[0]
    assert case.overrides == [] and case.target == 0.9  # the default `vla-train`, as a user launches it
    case = bench.Case(case.label, case.overrides, updates=1, target=case.target)
    r = bench.run_case(case, 0.05, tmp_path)
    assert r["batch"] == 12 * 8  # 5% of the default's 256 steps, 8 envs
    assert 0 < r["train_sps"] < r["rollout_sps"]
    assert r["update"] > 0 and r["env"] > 0 and r["raw"] > 0
    env_time = r["batch"] / r["raw"]
    assert abs(r["bound"] - env_time / (env_time + r["update"])) < 1e-9 and 0 < r["bound"] < 1

    class Args:
        scale, only = 0.05, case.label

    text = bench.render({case.label: r}, {}, {}, {}, {}, Args, 1.0, 0.0, 0.0)
    row = next(line for line in text.splitlines() if line.startswith(f"| {case.label} | {r['raw']:,.0f} |"))
    assert row.endswith(f"| 90% | {r['bound']:.0%} |")
    assert "python experiments/bench_throughput.py --scale 0.05" in text
