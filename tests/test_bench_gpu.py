"""experiments/bench_gpu.py: the backbone measurements run on the CPU, and the side-by-side report keeps each
machine's numbers in its own column."""

from tests.conftest import load_experiment


def test_backbone_rows_time_the_model_until_too_slow_then_only_the_processor():
    bench = load_experiment("bench_gpu")
    rows = [row for row in bench.bench_backbones("cpu", slow_call=0.0, only="tiny") if row["dtype"] == "float32"]
    assert [row["batch"] for row in rows] == [1, 8, 32, 128, 512]
    first, *rest = rows
    assert 0 < first["frozen_ms"] < first["step_ms"] and first["frames_per_s"] == 1e3 / first["step_ms"]
    assert all("step_ms" not in row and row["processor_ms"] > 0 for row in rest)


def test_report_puts_each_machine_in_its_own_column():
    bench = load_experiment("bench_gpu")

    def run(gpu, step_ms, render_ms):
        machine = {"gpu": gpu, "cpu_count": 16 if gpu else 2, "torch": "2", "python": "3.12"}
        rows = [dict(backbone="towers, 84x84", dtype="float32", batch=8, params_m=22.8, frozen_ms=1.0,
                     step_ms=step_ms, frames_per_s=8e3 / step_ms)]
        if not gpu:
            rows.append(dict(backbone="towers, 84x84", dtype="float32", batch=512, params_m=22.8,
                             processor_ms=7.0))
        render = {"MUJOCO_GL": "egl", "gl": "x", "mujoco": "3", "physics_ms": 1.5,
                  "frames": [dict(size=84, setting="fast_render", ms=render_ms)],
                  "parallel": [dict(processes=1, steps_per_s=1e3 / render_ms)]}
        return {"machine": machine, "device": "cuda" if gpu else "cpu", "backbones": rows, "render": render}

    text = bench.report([run("NVIDIA H200", 4.0, 0.3), run(None, 80.0, 40.0)])
    assert "NVIDIA H200 + 16 cores: frozen ms / step ms / frames/s | CPU, 2 cores: frozen" in text
    assert "| towers, 84x84 | 22.8 | float32 | 8 | 1.00 / 4.00 / 2,000 | 1.00 / 80.00 / 100 |" in text
    assert "| towers, 84x84 | 22.8 | float32 | 512 | not run | model not run (processor 7.0) |" in text
    assert "| 84x84 | fast_render | 0.30 | 40.00 |" in text
    assert "- CPU, 2 cores: 1 process 25/s" in text
