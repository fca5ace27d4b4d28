"""Atomic, verifiable checkpoints.

A checkpoint is a directory ``<run>/checkpoints/update_<N>/``:

- ``model.safetensors``   trainable weights and normalizer statistics (never frozen backbone weights)
- ``trainer.pt``           optimizer state and RNG tensors, loaded with ``torch.load(weights_only=True)``
- ``state.json``           counters, backbone identity, action/state sizes, Python and NumPy RNG states,
                           env snapshots for exact resume
- ``config.yaml``          the run's resolved config
- ``manifest.json``        SHA-256 of every file above; written last

Everything is written into a temporary directory, flushed to disk, and renamed into place in one step; the
``latest`` pointer is replaced atomically afterwards. A crash at any moment leaves the previous checkpoint
intact, and a directory whose files do not match its manifest is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from vla.errors import UserError

MANIFEST = "manifest.json"
LATEST = "latest"


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model it is loaded into."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(checkpoint_root: Path, name: str, *, weights: Dict[str, torch.Tensor],
                    trainer_state: Dict[str, Any], state: Dict[str, Any], config_yaml: str, keep: int,
                    update_latest: bool = True) -> Path:
    """Write checkpoint ``name`` under ``checkpoint_root`` atomically, point ``latest`` at it (unless
    ``update_latest`` is False, as for ``best``), and prune all but the newest ``keep`` others."""
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_root / name
    tmp = checkpoint_root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    (tmp / "config.yaml").write_text(config_yaml)
    files = ["model.safetensors", "trainer.pt", "state.json", "config.yaml"]
    manifest = {f: _sha256(tmp / f) for f in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for f in files + [MANIFEST]:
        _fsync_file(tmp / f)
    _fsync_dir(tmp)
    if final.exists():  # re-writing the same update (e.g. after resume): move the old one aside first
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(checkpoint_root)
    if update_latest:
        write_text_atomic(checkpoint_root / LATEST, name + "\n")
    _prune(checkpoint_root, keep, protect=name)
    return final


def _prune(checkpoint_root: Path, keep: int, protect: str) -> None:
    periodic = sorted(p for p in checkpoint_root.iterdir() if p.is_dir() and p.name.startswith("update_"))
    for old in periodic[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_root.glob(".*.tmp-*"):  # left behind by a process killed mid-write
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def verify(checkpoint_dir: Path) -> Optional[str]:
    """None if the checkpoint is complete and intact, else what is wrong with it."""
    manifest_path = checkpoint_dir / MANIFEST
    if not manifest_path.is_file():
        return f"{checkpoint_dir} has no {MANIFEST} (incomplete write or not a checkpoint)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        return f"{manifest_path} is corrupt: {error}"
    for name, digest in manifest.items():
        path = checkpoint_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if _sha256(path) != digest:
            return f"{path} does not match its checksum (truncated or corrupt file)"
    return None


def _named_by_latest(checkpoint_root: Path) -> Path:
    """The checkpoint directory that ``checkpoint_root/latest`` (written by ``save_checkpoint``) names."""
    return checkpoint_root / (checkpoint_root / LATEST).read_text().strip()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, a run directory, a run's ``checkpoints/`` directory or its ``latest`` pointer file
    -> an intact checkpoint.

    For a run, the checkpoint named by ``latest`` is used when intact, else the newest intact one.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist; pass a run directory or a "
                              "checkpoint directory such as runs/<date>/checkpoints/update_000010")
    if path.is_file():
        if path.name != LATEST:
            raise CheckpointError(f"checkpoint path {path} is a file; pass a run directory or a checkpoint "
                                  "directory such as runs/<date>/checkpoints/update_000010")
        path = _named_by_latest(path.parent)
        if not path.is_dir():
            raise CheckpointError(f"{path.parent / LATEST} names {path.name}, which does not exist; pass the run "
                                  f"directory {path.parent.parent} to fall back to the newest intact checkpoint")
    if (path / MANIFEST).exists() or (path / "model.safetensors").exists():
        problem = verify(path)
        if problem:
            raise CheckpointError(f"cannot load checkpoint: {problem}")
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    candidates = []
    if (root / LATEST).is_file():
        candidates.append(_named_by_latest(root))
    candidates += sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("update_")), reverse=True)
    problems = []
    for candidate in candidates:
        problem = verify(candidate)
        if problem is None:
            return candidate
        problems.append(problem)
    detail = "; ".join(problems) if problems else "no checkpoint directories found"
    raise CheckpointError(f"no intact checkpoint under {root}: {detail}")


def run_directory(checkpoint_dir: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/<name>``)."""
    return checkpoint_dir.parent.parent


def load_checkpoint(checkpoint_dir: Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a verified checkpoint: {"weights", "trainer", "state", "config_yaml", "path"}."""
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    trainer_path = checkpoint_dir / "trainer.pt"
    trainer_state = {}
    if trainer_path.exists():
        try:
            trainer_state = torch.load(trainer_path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            # weights_only=True refuses any pickled object other than tensors and plain containers: a file
            # carrying code (a __reduce__ payload) stops here, before anything of it runs. Of torch's message only
            # the line naming the refused object is kept (the rest suggests weights_only=False).
            reason = next((line for line in str(error).splitlines() if "GLOBAL" in line),
                          "an object the weights-only unpickler does not allow")
            raise CheckpointError(
                f"refusing {trainer_path}: it holds objects other than tensors and plain containers, which "
                f"vla-train never writes, so the file was altered or made elsewhere ({reason}). Only load "
                "checkpoints from sources you trust.") from error
    return {
        "weights": load_file(str(checkpoint_dir / "model.safetensors"), device=str(map_location)),
        "trainer": trainer_state,
        "state": json.loads((checkpoint_dir / "state.json").read_text()),
        "config_yaml": (checkpoint_dir / "config.yaml").read_text(),
        "path": checkpoint_dir,
    }


def check_compatible(state: Dict[str, Any], *, backbone_identity: Dict[str, str], state_dim: int,
                     action_dim: int, path: Path) -> None:
    """Refuse a checkpoint made for another backbone, state size or action space, naming the difference."""
    problems = []
    if state.get("backbone") != backbone_identity:
        problems.append(f"backbone {state.get('backbone')} vs this run's {backbone_identity}")
    if state.get("state_dim") != state_dim:
        problems.append(f"state size {state.get('state_dim')} vs {state_dim}")
    if state.get("action_dim") != action_dim:
        problems.append(f"action size {state.get('action_dim')} vs {action_dim}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems)
                              + ". Use the same backbone/env config the checkpoint was trained with.")
