"""Tensorboard scalars and the console progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


class RunLogger:
    """Writes scalars to ``<run>/tb`` and keeps a progress bar with steps, SPS, success rate and return.

    ``start_step`` > 0 on resume: tensorboard events after it (written by the interrupted process after its
    last checkpoint, which holds everything up to ``start_step``) are purged, so curves continue without
    duplicate or missing steps.
    """

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: bool):
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step > 0 else None)
        self.bar: Optional[tqdm] = None
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc="train", smoothing=0.1)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def progress(self, steps: int, summary: Dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(summary, refresh=False)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.flush()
        self.writer.close()
