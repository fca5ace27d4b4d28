"""Nothing in a config, checkpoint or model file is executed as code.

Statically: the source tree never unpickles (``pickle``/``torch.load`` without ``weights_only=True``/``np.load``
with ``allow_pickle``), never evaluates strings (``eval``/``exec``), never loads YAML unsafely, never builds
objects from config (hydra ``instantiate``/``_target_``) and never turns ``trust_remote_code`` on by itself.
Dynamically: a checkpoint whose ``trainer.pt`` carries a ``__reduce__`` payload (with a manifest that matches,
so only the unpickler stands in the way) is refused with a clear error, and the payload never runs.
"""

import ast
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from vla import checkpoint as ckpt
from vla.config import HFBackboneConfig

# Everything that ships or runs as the framework (tests build malicious files on purpose and are not scanned).
SOURCE_DIRS = ["vla", "envs", "policies", "critics", "experiments"]
UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
    "joblib.load", "marshal.load", "marshal.loads", "shelve.open", "yaml.unsafe_load", "yaml.full_load",
    "hydra.utils.instantiate", "hydra.utils.call", "hydra.utils.get_class", "hydra.utils.get_method",
    "instantiate",
}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a call target built from names and attributes, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value == value for k in call.keywords)


def unsafe_calls(source: str, filename: str):
    """``(filename:line, what)`` for every call that could run code from data."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name, where = _dotted(node.func), f"{filename}:{node.lineno}"
        if name in UNSAFE_CALLS or name in UNSAFE_BUILTINS:
            found.append((where, name))
        elif name == "torch.load" and not _keyword_is(node, "weights_only", True):
            found.append((where, "torch.load without weights_only=True"))
        elif name in ("np.load", "numpy.load") and _keyword_is(node, "allow_pickle", True):
            found.append((where, "np.load with allow_pickle=True"))
        elif name == "yaml.load" and not any(k.arg == "Loader" and "Safe" in _dotted(k.value) for k in node.keywords):
            found.append((where, "yaml.load without a SafeLoader"))
        if _keyword_is(node, "trust_remote_code", True):
            found.append((where, "trust_remote_code=True"))
    return found


def _source_files():
    for directory in SOURCE_DIRS:
        yield from sorted((REPO / directory).rglob("*.py"))


def test_source_tree_never_runs_code_from_data():
    found = []
    for path in _source_files():
        found += unsafe_calls(path.read_text(), str(path.relative_to(REPO)))
    assert not found, "unsafe calls: " + "; ".join(f"{where} {what}" for where, what in found)
    assert len(list(_source_files())) > 20  # the scan did look at the tree


@pytest.mark.parametrize("snippet", [
    "import torch\nstate = torch.load(path)",
    "import torch\nstate = torch.load(path, weights_only=False)",
    "import pickle\nstate = pickle.loads(blob)",
    "import yaml\ncfg = yaml.load(text)",
    "import yaml\ncfg = yaml.load(text, Loader=yaml.Loader)",
    "import numpy as np\na = np.load(path, allow_pickle=True)",
    "value = eval(cfg.expression)",
    "exec(code)",
    "from hydra.utils import instantiate\nmodel = instantiate(cfg.model)",
    "model = AutoModel.from_pretrained(name, trust_remote_code=True)",
])
def test_scanner_finds_each_unsafe_pattern(snippet):
    assert unsafe_calls(snippet, "snippet.py")


@pytest.mark.parametrize("snippet", [
    "import torch\nstate = torch.load(path, map_location='cpu', weights_only=True)",
    "import yaml\ncfg = yaml.safe_load(text)",
    "import yaml\ncfg = yaml.load(text, Loader=yaml.SafeLoader)",
    "model.eval()",
    "model = AutoModel.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)",
])
def test_scanner_lets_safe_calls_pass(snippet):
    assert not unsafe_calls(snippet, "snippet.py")


def test_configs_never_name_classes_to_instantiate():
    targets = [str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*.yaml") if "_target_" in p.read_text()]
    assert not targets, f"_target_ in {targets}: configs must not choose code to run"


def test_remote_code_stays_off_unless_the_user_turns_it_on():
    assert HFBackboneConfig().trust_remote_code is False


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: stands in for any code an attacker would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_checkpoint_with_a_pickled_code_payload_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    checkpoint = ckpt.save_checkpoint(tmp_path / "checkpoints", "update_000001", weights={"w": torch.zeros(2)},
                                      trainer_state={"step": torch.tensor(1)}, state={"global_step": 1},
                                      config_yaml="a: 1\n", keep=3)
    trainer_path = checkpoint / "trainer.pt"
    torch.save({"optimizer": _Payload(marker)}, trainer_path)
    # A manifest that matches the altered file: the checksum check passes, only the unpickler is left.
    manifest = json.loads((checkpoint / ckpt.MANIFEST).read_text())
    manifest["trainer.pt"] = hashlib.sha256(trainer_path.read_bytes()).hexdigest()
    (checkpoint / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.verify(checkpoint) is None

    with pytest.raises(ckpt.CheckpointError, match=r"refusing .*trainer.pt: it holds objects other than "
                                                   r"tensors.*GLOBAL \S*mkdir"):
        ckpt.load_checkpoint(tmp_path)
    assert not marker.exists()
    # The payload is live: an unrestricted unpickler runs it (which is why checkpoints never use one).
    torch.load(trainer_path, weights_only=False)
    assert marker.is_dir()
