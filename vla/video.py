"""Episode videos: caption frames, write mp4 (gif when no encoder is available), log to tensorboard."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def caption(frame: np.ndarray, text: str) -> np.ndarray:
    """The frame with a dark caption bar underneath carrying ``text`` (task, instruction, outcome)."""
    height, width = frame.shape[:2]
    font = ImageFont.load_default()
    lines = _wrap(text, max(10, width // 7))
    bar = 4 + 12 * len(lines)
    canvas = Image.new("RGB", (width, height + bar), (20, 20, 20))
    canvas.paste(Image.fromarray(np.ascontiguousarray(frame[..., :3])), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, height + 2 + 12 * i), line, fill=(235, 235, 235), font=font)
    return np.asarray(canvas)


def _wrap(text: str, width: int) -> List[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + [current] if current else lines


def write_video(frames: List[np.ndarray], path: Path, fps: int) -> Path:
    """Write ``frames`` to ``path`` (.mp4); falls back to .gif if no ffmpeg encoder can be loaded."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    # libx264 wants even sizes
    h, w = frames[0].shape[:2]
    frames = [f[: h - h % 2, : w - w % 2] for f in frames]
    try:
        imageio.mimwrite(path, frames, fps=fps, codec="libx264", quality=7, macro_block_size=1)
        return path
    except Exception:  # no ffmpeg plugin/binary: a gif still shows the episode
        gif = path.with_suffix(".gif")
        imageio.mimwrite(gif, frames, duration=1000 / fps, loop=0)
        return gif


def log_video(writer, tag: str, frames: List[np.ndarray], step: int, fps: int) -> None:
    """Tensorboard video: (1, T, C, H, W) uint8; needs moviepy<2 (moviepy 2 dropped what tensorboard uses)."""
    video = np.stack(frames)[None].transpose(0, 1, 4, 2, 3)
    writer.add_video(tag, video, global_step=step, fps=fps)
