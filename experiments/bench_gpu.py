"""Backbone inference throughput at rollout batch sizes, and the rendering speed of robosuite Lift's scene, on
this machine's GPU when it has one (else its CPU): issue 6, item 5.

    # where robosuite is installed (here), once: Lift's compiled scene, reset, as a MuJoCo binary model
    python experiments/bench_gpu.py --save-scene /tmp/lift_scene.mjb
    # on each machine to compare (the GPU machine needs no robosuite, only mujoco and this repo)
    MUJOCO_GL=egl python experiments/bench_gpu.py --scene /tmp/lift_scene.mjb --json out.json
    # the side-by-side report of two runs
    python experiments/bench_gpu.py --report gpu.json cpu.json > experiments/results/bench_gpu.md

Backbones, timed as a rollout step runs them (``torch.no_grad``, one batch of ``num_envs`` observations):
``frozen`` is the backbone's frozen stage alone on observations already on the device (what feature caching
stores); ``step`` is the whole inference of a rollout step, from the vector env's numpy batch to actions back on
the host (``to_tensors`` with pinned, non-blocking copies, frozen stage, projection, heads, sampling). The
heads are the test suite's (``policy=gaussian_transformer`` of width 32, ``critic=attention``).
- ``towers``: EfficientNet-Lite0 + MiniLM-L6 (instruction tokens cached per instruction), 84x84 frames as
  robosuite's agentview camera gives them, and 224x224.
- ``hf``: random Llava-style VLMs (SigLIP vision + Qwen2 text), built from transformers configs and loaded
  through ``backbone=hf`` as a hub checkpoint is, processor included: the tiny one of the test suite (width 32,
  2+2 layers, 32 px) and one of SmolVLM-256M's tower sizes (SigLIP-B/16 at 224 px, 196 image tokens; a 30-layer
  576-wide Qwen2 text model with 9 query and 3 key-value heads; a 17-token vocabulary instead of its 49k): 0.2B
  parameters. Random weights time the same as trained ones.

Rendering: MuJoCo's own ``Renderer`` (the GL calls robosuite's offscreen renderer makes) on Lift's agentview
camera, robosuite's default settings (shadows, reflections, skybox, 4x multisampling as the scene sets it) and
this repo's ``fast_render`` (all off), at 84x84 and 256x256, one process; then whole env-like steps (the 25
physics steps of a 20 Hz control step plus one 84x84 fast frame) in 1..N processes at once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SUBSTEPS = 25  # robosuite: control_freq 20 Hz over the 2 ms physics step


# ------------------------------------------------------------------------------------------------ backbones
def timed(fn: Callable[[], object], sync: Callable[[], None], budget: float = 1.0, min_reps: int = 3,
          max_reps: int = 50) -> float:
    """Median seconds of one call, after two warm-up calls; repeats until ``budget`` seconds or ``max_reps``."""
    for _ in range(2):
        fn()
    sync()
    times: List[float] = []
    while len(times) < min_reps or (sum(times) < budget and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def processor_seconds(backbone, obs: Dict[str, "torch.Tensor"]) -> float:
    """The hf backbone's processor alone on the batch (``HFBackbone.processor_inputs``, the first part of its
    frozen stage): it tokenizes the prompts and resizes and normalizes the images on the CPU, whatever the
    model's device."""
    return timed(lambda: backbone.processor_inputs(obs), lambda: None)


def save_llava(directory: Path, vision: dict, text: dict, image_size: int, patch_size: int) -> Path:
    """A random Llava-style VLM with the test suite's word-level tokenizer and chat template, saved as a hub
    checkpoint is laid out."""
    import transformers as tf

    from tests.test_backbones import CHAT_TEMPLATE, word_tokenizer

    tokenizer = word_tokenizer(["<image>"])
    tokens = (image_size // patch_size) ** 2
    config = tf.LlavaConfig(
        vision_config=tf.SiglipVisionConfig(image_size=image_size, patch_size=patch_size, **vision),
        text_config=tf.Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=1024, bos_token_id=None,
                                   eos_token_id=None, **text),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_seq_length=tokens)
    processor = tf.LlavaProcessor(
        image_processor=tf.SiglipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="full",
        num_additional_image_tokens=0, chat_template=CHAT_TEMPLATE.replace("IMAGE", "<image>"))
    tf.LlavaForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def backbone_cases(tmp: Path) -> List[dict]:
    """Each case's ``overrides`` is called when the case runs: the hf checkpoints are written then."""
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    smol_vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    smol_text = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3)
    big_batches = [1, 8, 32, 128, 512]
    return [
        dict(label="towers, 84x84", image=84, overrides=lambda: ["backbone=towers"], batches=big_batches),
        dict(label="towers, 224x224", image=224, overrides=lambda: ["backbone=towers"], batches=[1, 8, 32, 128]),
        dict(label="hf tiny Llava (width 32, 2+2 layers, 32 px)", image=84, batches=big_batches,
             overrides=lambda: ["backbone=hf", "backbone.model="
                                f"{save_llava(tmp / 'tiny', tiny, dict(tiny, num_key_value_heads=1), 32, 8)}"]),
        dict(label="hf Llava at SmolVLM-256M's tower sizes (0.2B, 224 px)", image=84, batches=[1, 8, 32, 128],
             overrides=lambda: ["backbone=hf",
                                f"backbone.model={save_llava(tmp / 'smol', smol_vision, smol_text, 224, 16)}"]),
    ]


def bench_backbones(device_name: str, slow_call: float, only: Optional[str]) -> List[dict]:
    import torch

    from tests.test_backbones import ImageInstructionEnv, actor_critic, batch_obs
    from vla.backbones.towers import bfloat16_is_native

    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtypes = ["float32", "bfloat16"] if bfloat16_is_native() or device.type == "cuda" else ["float32"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in backbone_cases(Path(tmp)):
            if only and only not in case["label"]:
                continue
            env = ImageInstructionEnv(image_size=case["image"])
            overrides = case["overrides"]()
            for dtype in dtypes:
                model = actor_critic(env, *overrides, f"backbone.dtype={dtype}").to(device).eval()
                params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
                too_slow = False
                for batch in case["batches"]:
                    obs = batch_obs(env, batch)
                    row = dict(backbone=case["label"], dtype=dtype, batch=batch, params_m=round(params, 1))
                    with torch.no_grad():
                        on_device = model.to_tensors(obs)
                        if hasattr(model.backbone, "processor"):
                            row["processor_ms"] = processor_seconds(model.backbone, on_device) * 1e3
                        if not too_slow:
                            if device.type == "cuda":
                                torch.cuda.reset_peak_memory_stats()
                            frozen = timed(lambda: model.encode_frozen(on_device), sync)
                            step = timed(lambda: model.act(model.to_tensors(obs)).action.cpu(), sync)
                            row.update(frozen_ms=frozen * 1e3, step_ms=step * 1e3, frames_per_s=batch / step)
                            too_slow = step > slow_call  # a CPU: larger batches only take longer per frame
                    if device.type == "cuda" and "step_ms" in row:
                        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
                    rows.append(row)
                    print(f"{case['label']:52s} {dtype:8s} batch {batch:4d}: " + ", ".join(
                        f"{key} {row[key]:.2f}" for key in ("frozen_ms", "step_ms", "frames_per_s", "processor_ms")
                        if key in row), flush=True)
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------ rendering
def save_scene(path: Path) -> None:
    """Lift's compiled model after a reset (robosuite's own scene, cube and robot placed), and its state."""
    import mujoco

    from envs.robosuite_env import RobosuiteEnv

    env = RobosuiteEnv(task="Lift", fast_render=False)
    env.reset(seed=0)
    mujoco.mj_saveModel(env.model, str(path), None)
    np.save(path.with_suffix(".qpos.npy"), env.data.qpos.copy())
    env.close()
    print(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB) and its reset state")


def load_scene(path: Path):
    import mujoco

    model = mujoco.MjModel.from_binary_path(str(path))
    data = mujoco.MjData(model)
    data.qpos[:] = np.load(path.with_suffix(".qpos.npy"))
    mujoco.mj_forward(model, data)
    return model, data


def make_renderer(model, size: int, fast: bool, default_samples: int):
    import mujoco

    from envs.robosuite_env import SLOW_RENDER_FLAGS

    model.vis.quality.offsamples = 0 if fast else default_samples  # read when the GL buffers are made
    renderer = mujoco.Renderer(model, size, size)
    if fast:
        for flag in SLOW_RENDER_FLAGS:
            renderer.scene.flags[flag] = 0
    return renderer


def gl_renderer_name() -> str:
    try:
        from OpenGL import GL

        return " / ".join(GL.glGetString(name).decode() for name in (GL.GL_VENDOR, GL.GL_RENDERER))
    except Exception as error:  # noqa: BLE001  (a name for the report only)
        return f"unknown ({type(error).__name__})"


def env_like_steps(scene: str, seconds: float, start_at: float, out) -> None:
    """Worker: 25 physics steps with random controls plus one fast 84x84 agentview frame, for ``seconds``."""
    import mujoco

    model, data = load_scene(Path(scene))
    renderer = make_renderer(model, 84, True, 0)
    rng = np.random.default_rng(os.getpid())
    while time.time() < start_at:
        time.sleep(0.001)
    steps, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        data.ctrl[:] = rng.uniform(-1, 1, model.nu)
        for _ in range(SUBSTEPS):
            mujoco.mj_step(model, data)
        renderer.update_scene(data, camera="agentview")
        renderer.render()
        steps += 1
    out.put(steps / (time.perf_counter() - begin))
    renderer.close()


def bench_render(scene: Path, processes: List[int], out) -> None:
    """Runs in a child process: here, importing torchvision after Mesa's EGL was used crashed the process."""
    import mujoco

    model, data = load_scene(scene)
    default_samples = int(model.vis.quality.offsamples)
    result = {"mujoco": mujoco.__version__, "MUJOCO_GL": os.environ.get("MUJOCO_GL"), "frames": []}
    for size in (84, 256):
        for fast in (False, True):
            renderer = make_renderer(model, size, fast, default_samples)

            def frame():
                renderer.update_scene(data, camera="agentview")
                return renderer.render()

            seconds = timed(frame, lambda: None, budget=2.0, max_reps=2000)
            result["gl"] = gl_renderer_name()
            renderer.close()
            setting = "fast_render" if fast else "robosuite default"
            result["frames"].append(dict(size=size, setting=setting, ms=seconds * 1e3))
            print(f"render {size}x{size} {setting:18s}: {seconds * 1e3:7.2f} ms/frame", flush=True)
    physics = timed(lambda: [mujoco.mj_step(model, data) for _ in range(SUBSTEPS)], lambda: None, budget=2.0,
                    max_reps=2000)
    result["physics_ms"] = physics * 1e3
    print(f"physics, {SUBSTEPS} steps: {physics * 1e3:.2f} ms", flush=True)
    result["parallel"] = []
    context = mp.get_context("spawn")
    for count in processes:
        queue = context.Queue()
        start_at = time.time() + 3.0 + 0.2 * count  # every worker has its GL context before the clock starts
        workers = [context.Process(target=env_like_steps, args=(str(scene), 4.0, start_at, queue))
                   for _ in range(count)]
        for worker in workers:
            worker.start()
        rates = [queue.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join()
        result["parallel"].append(dict(processes=count, steps_per_s=sum(rates)))
        print(f"{count:2d} processes: {sum(rates):8.0f} env-like steps/s", flush=True)
    out.put(result)


# ------------------------------------------------------------------------------------------------ report
def machine() -> dict:
    import torch

    info = {"host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def machine_label(run: dict) -> str:
    m = run["machine"]
    return f"{m['gpu']} + {m['cpu_count']} cores" if m["gpu"] else f"CPU, {m['cpu_count']} cores"


def report(runs: List[dict]) -> str:
    lines = ["# Backbone inference and robosuite rendering, GPU against CPU (issue 6, item 5)", ""]
    for run in runs:
        m = run["machine"]
        lines.append(f"- **{machine_label(run)}**: backbones on `{run['device']}`, torch {m['torch']}, "
                     f"transformers {m.get('transformers')}, Python {m['python']}; rendering through "
                     f"MUJOCO_GL={run['render'].get('MUJOCO_GL')} ({run['render'].get('gl')}), "
                     f"mujoco {run['render'].get('mujoco')}.")
    lines += ["", "## Backbone inference per rollout step", "",
              "`frozen`: the frozen stage on a batch already on the device; `step`: numpy batch to actions on "
              "the host (copies, frozen stage, projection, heads, sampling). frames/s = batch / step. hf rows: "
              "(processor ms), the Hugging Face processor alone on the same batch, on the CPU whatever the "
              "model's device (prompt tokens, image resizing and normalization), a part of the frozen stage. "
              "*model not run*: a smaller batch already took over --slow-call seconds.", ""]
    header = "| backbone | params (M) | dtype | batch | " + " | ".join(
        f"{machine_label(r)}: frozen ms / step ms / frames/s" for r in runs) + " |"
    lines += [header, "|" + "---|" * (4 + len(runs))]
    keys = []
    for run in runs:
        for row in run["backbones"]:
            key = (row["backbone"], row["dtype"], row["batch"])
            if key not in keys:
                keys.append(key)
    for key in keys:
        cells, params = [], ""
        for run in runs:
            match = [r for r in run["backbones"] if (r["backbone"], r["dtype"], r["batch"]) == key]
            if match:
                r = match[0]
                params = f"{r['params_m']:.1f}"
                processor = f" (processor {r['processor_ms']:.1f})" if "processor_ms" in r else ""
                if "step_ms" in r:
                    cells.append(f"{r['frozen_ms']:.2f}{processor} / {r['step_ms']:.2f} / {r['frames_per_s']:,.0f}")
                else:
                    cells.append(f"model not run{processor}")
            else:
                cells.append("not run")
        lines.append(f"| {key[0]} | {params} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    if not all(run["render"] for run in runs):
        return "\n".join(lines) + "\n"
    lines += ["", "## Rendering Lift's agentview camera (one process)", "",
              "| size | setting | " + " | ".join(f"{machine_label(r)} ms/frame" for r in runs) + " |",
              "|" + "---|" * (2 + len(runs))]
    for index, frame in enumerate(runs[0]["render"]["frames"]):
        cells = [f"{run['render']['frames'][index]['ms']:.2f}" for run in runs]
        lines.append(f"| {frame['size']}x{frame['size']} | {frame['setting']} | " + " | ".join(cells) + " |")
    lines.append(f"| physics | {SUBSTEPS} mj_step (one control step) | " + " | ".join(
        f"{run['render']['physics_ms']:.2f}" for run in runs) + " |")
    lines += ["", f"## Env-like steps ({SUBSTEPS} physics steps + one fast 84x84 frame) in parallel processes", ""]
    for run in runs:
        lines.append(f"- {machine_label(run)}: " + ", ".join(
            f"{p['processes']} process{'es' if p['processes'] > 1 else ''} {p['steps_per_s']:,.0f}/s"
            for p in run["render"]["parallel"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-scene", type=Path, help="write Lift's scene (needs robosuite) and stop")
    parser.add_argument("--scene", type=Path, help="the scene --save-scene wrote; rendering is skipped without")
    parser.add_argument("--device", default=None, help="torch device for the backbones (default: cuda if any)")
    parser.add_argument("--skip-backbones", action="store_true")
    parser.add_argument("--processes", default=None, help="comma-separated process counts for the parallel "
                        "env-like steps (default: 1, 2, and 4, 8, 16 up to the core count)")
    parser.add_argument("--only", default=None, help="only the backbones whose label contains this text")
    parser.add_argument("--slow-call", type=float, default=3.0,
                        help="stop growing a backbone's batch once one step takes this many seconds")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--report", type=Path, nargs="+", help="render the markdown report of these JSON runs")
    args = parser.parse_args()
    if args.report:
        print(report([json.loads(path.read_text()) for path in args.report]), end="")
        return
    if args.save_scene:
        save_scene(args.save_scene)
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    run: Dict[str, object] = {"machine": machine(), "device": device, "backbones": [], "render": {}}
    if args.scene:
        counts = [int(c) for c in args.processes.split(",")] if args.processes else \
            sorted({1, 2, *[c for c in (4, 8, 16) if c <= (os.cpu_count() or 1)]})
        context = mp.get_context("spawn")
        queue = context.Queue()
        child = context.Process(target=bench_render, args=(args.scene, counts, queue))
        child.start()
        run["render"] = queue.get(timeout=900)
        child.join()
    if not args.skip_backbones:
        run["backbones"] = bench_backbones(device, args.slow_call, args.only)
    if args.json:
        args.json.write_text(json.dumps(run, indent=1))
    print(report([run]))


if __name__ == "__main__":
    main()
