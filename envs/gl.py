"""Offscreen GL and triton in one process."""

from __future__ import annotations


def load_triton_before_gl() -> None:
    """Load triton's LLVM before any offscreen GL context exists in this process.

    Mesa's software GL (EGL/OSMesa on machines without a GPU driver) brings its own LLVM; importing triton
    (torch.compile's backend, pulled in by torchvision and timm imports) after a GL context was made crashes
    the process with a segmentation fault. Loaded the other way round, both work. Called by ``make_env`` and
    by every env before it makes a renderer.
    """
    try:
        import triton  # noqa: F401
    except ImportError:  # no triton (CPU-only torch builds): nothing to clash with
        pass
