"""Validation of params.yaml: unknown keys, wrong types and out-of-range values are refused with a message that
names the key and what is allowed, before any expensive work starts."""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exdd_core.runtime import choices as c
from exdd_core.runtime.atomic import write_text_atomic
from exdd_core.runtime.choices import NAMED_WEIGHTS, WEIGHT_SUFFIXES
from exdd_core.runtime.errors import ParamError


@dataclass(frozen=True)
class Rule:
    """One leaf of the schema: a type check plus an optional range / choice check, and a description."""

    check: Callable[[Any], bool]
    allowed: str

    def __call__(self, key: str, value: Any) -> None:
        try:
            ok = self.check(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ParamError(f"params: {key} = {value!r} is not allowed; expected {self.allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    desc = "an integer" + (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
    return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi), desc)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Rule:
    op = ">" if lo_open else ">="
    desc = "a number" + (f" {op} {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")

    def ok(v: Any) -> bool:
        if not _is_num(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi

    return Rule(ok, desc)


def choice(*options: Any) -> Rule:
    return Rule(lambda v: v in options, "one of " + ", ".join(repr(o) for o in options))


def text() -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.check(v), f"null or {rule.allowed}")


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def size_hw() -> Rule:
    return Rule(
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and 32 <= x <= 8192 for x in v),
        "[H, W]: two integers between 32 and 8192",
    )


def weights_rule() -> Rule:
    return Rule(
        lambda v: isinstance(v, str) and (v in NAMED_WEIGHTS or v.endswith(WEIGHT_SUFFIXES)),
        f"one of {NAMED_WEIGHTS} or a path ending in one of {WEIGHT_SUFFIXES}",
    )


def layers_rule() -> Rule:
    return Rule(
        lambda v: (
            isinstance(v, list)
            and 1 <= len(v) <= 5
            and all(_is_int(x) and 0 <= x <= 4 for x in v)
            and v == sorted(set(v))
        ),
        "a sorted list of distinct timm feature indices between 0 and 4, e.g. [2, 3]",
    )


def prompts_rule() -> Rule:
    return Rule(
        lambda v: isinstance(v, list) and len(v) >= 1 and all(isinstance(p, str) and p for p in v),
        "a non-empty list of prompt strings",
    )


DEVICE = choice(*c.DEVICES)

SCHEMA: dict[str, Any] = {
    "seed": integer(0),
    "data": {
        "source": choice(*c.DATA_SOURCES),
        "root": text(),
        "image_size": size_hw(),
        "folder": {
            "normal_dir": text(),
            "abnormal_dir": text(),
            "mask_dir": optional(text()),
            "known_defects_dir": optional(text()),
            "normal_test_fraction": number(0.0, 1.0, lo_open=True),
        },
        "demo": {
            "train_normal": integer(1),
            "train_defective": integer(0),
            "test_normal": integer(1),
            "test_defective": integer(1),
        },
    },
    "synth": {
        "backend": choice(*c.SYNTH_BACKENDS),
        "count": integer(0),
        "jitter": boolean(),
        "diff_threshold": number(0.0, 1.0, lo_open=True),
        "masks": choice(*c.SYNTH_MASKS),
        "dilate": integer(0, 64),
        "min_area": integer(0),
        "prompts": prompts_rule(),
        "negative_prompt": Rule(lambda v: isinstance(v, str), "a string"),
        "model": text(),
        "revision": optional(text()),
        "cache_dir": optional(text()),
        "steps": integer(1),
        "guidance": number(0.0),
        "strength": number(0.0, 1.0, lo_open=True),
        "padding_mask_crop": optional(integer(0)),
        "resolution": Rule(
            lambda v: _is_int(v) and 64 <= v <= 4096 and v % 8 == 0, "an integer multiple of 8 in 64..4096"
        ),
        "device": DEVICE,
        "batch_size": integer(1),
    },
    "backbone": {
        "name": text(),
        "weights": weights_rule(),
        "layers": layers_rule(),
        "device": DEVICE,
    },
    "features": {
        "patch_size": Rule(lambda v: _is_int(v) and v >= 1 and v % 2 == 1, "an odd integer >= 1"),
        "aggregation": choice(*c.AGGREGATIONS),
        "store_dim": optional(integer(1)),
        "dtype": choice(*c.STORE_DTYPES),
        "batch_size": integer(1, 4096),
        "autocast": boolean(),
    },
    "bank": {
        "normal_ratio": number(0.0, 1.0, lo_open=True),
        "defect_ratio": number(0.0, 1.0, lo_open=True),
        "min_size": integer(1),
        "projection_dim": integer(1),
        "coreset_method": choice(*c.CORESET_METHODS),
        "mask_threshold": number(0.0, 1.0, lo_open=True),
        "defect_patches": choice(*c.DEFECT_PATCHES),
        "purify": optional(number(0.0, 1.0)),
        "pseudo_top": number(0.0, 1.0, lo_open=True),
        "device": DEVICE,
    },
    "scoring": {
        "neighbors": integer(1),
        "mode": choice(*c.SCORE_MODES),
        "fusion": {
            "form": choice(*c.FUSION_FORMS),
            "lam": Rule(lambda v: v == "cv" or (_is_num(v) and v >= 0), "a number >= 0 or 'cv'"),
            "topk": integer(1),
            "candidates": Rule(
                lambda v: isinstance(v, list) and len(v) >= 1 and all(_is_num(x) and x >= 0 for x in v),
                "a non-empty list of numbers >= 0",
            ),
            "folds": integer(2, 20),
            "tolerance": number(0.0),
            "cell_coverage": number(0.0, 1.0, lo_open=True),
            "head_floor": choice(*c.HEAD_FLOORS),
        },
        "eps": number(0.0, lo_open=True),
        "sigma": number(0.0),
        "map_reweight": boolean(),
        "map_8bit": boolean(),
        "device": DEVICE,
    },
    "eval": {
        "calibration_fraction": number(0.0, 0.9),
        "target_fpr": number(0.0, 1.0),
        "max_fpr": number(0.0, 1.0, lo_open=True),
        "heatmaps": integer(0),
    },
}


def _validate(tree: Any, schema: dict[str, Any], prefix: str) -> None:
    if not isinstance(tree, dict):
        raise ParamError(
            f"params: {prefix or 'the file'} must be a mapping of keys, got {type(tree).__name__}"
        )
    for key in tree:
        if key not in schema:
            where = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            allowed = ", ".join(schema)
            raise ParamError(f"params: unknown key {where}{hint}; allowed here: {allowed}")
    for key, rule in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in tree:
            raise ParamError(f"params: missing key {where}")
        if isinstance(rule, dict):
            _validate(tree[key], rule, where)
        else:
            rule(where, tree[key])


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check a whole params tree against SCHEMA and cross-field rules; return it unchanged."""
    _validate(params, SCHEMA, "")
    s = params["synth"]
    if s["backend"] == "none" and s["count"] != 0:
        raise ParamError("params: synth.count must be 0 when synth.backend is 'none'")
    if params["bank"]["projection_dim"] > 100_000:
        raise ParamError("params: bank.projection_dim is unreasonably large (expected e.g. 128)")
    return params


class TrackedParams(dict):
    """A params (sub)tree that records the dotted key of every leaf a stage reads (`reads`, shared by the
    whole tree). Stages read params only through this, so a test can check each stage's reads against the
    `params:` it declares in dvc.yaml (an undeclared read is a result DVC would not rerun when it changes).

    Sections are TrackedParams themselves, held in place (so writes to a section stay in the tree); reading
    a section whole (iterating it, `dict(section)`, `{**section}`, dumping it) counts as reading every leaf.
    """

    def __init__(self, tree: dict[str, Any] | None = None, prefix: str = "", reads: set[str] | None = None):
        super().__init__()
        self._prefix = prefix
        self.reads: set[str] = set() if reads is None else reads
        for key, value in (tree or {}).items():
            dict.__setitem__(self, key, self._wrap(key, value))

    def _wrap(self, key: str, value: Any) -> Any:
        if isinstance(value, dict) and not isinstance(value, TrackedParams):
            return TrackedParams(value, f"{self._prefix}{key}.", self.reads)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, self._wrap(key, value))

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if not isinstance(value, TrackedParams):
            self.reads.add(f"{self._prefix}{key}")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def read_all(self) -> None:
        for k in dict.keys(self):
            value = self[k]
            if isinstance(value, TrackedParams):
                value.read_all()

    def __iter__(self) -> Iterator[str]:
        self.read_all()
        return super().__iter__()

    def keys(self):  # type: ignore[override]
        self.read_all()
        return super().keys()

    def items(self):  # type: ignore[override]
        return [(k, self[k]) for k in dict.keys(self)]

    def values(self):  # type: ignore[override]
        return [self[k] for k in dict.keys(self)]

    def __deepcopy__(self, memo: dict) -> TrackedParams:
        """A deep copy with its own (empty) record of reads."""
        return TrackedParams(copy.deepcopy(self.plain(), memo))

    def plain(self) -> dict[str, Any]:
        """The tree as plain dicts (reads everything)."""
        return {k: v.plain() if isinstance(v, TrackedParams) else v for k, v in self.items()}


# yaml.safe_dump writes a params tree as the mapping it is.
yaml.SafeDumper.add_representer(TrackedParams, lambda d, data: d.represent_dict(data.plain()))


_LOADED: list[TrackedParams] = []
READS_ENV = "EXDD_PARAMS_READS"  # a folder: each stage writes <stage>.json, the param keys it read


def params_read() -> list[str]:
    """Dotted keys of every params leaf read so far in this process, sorted."""
    return sorted(set().union(*(t.reads for t in _LOADED)))


def record_params_read(stage: str) -> None:
    """Write the keys this stage read to $EXDD_PARAMS_READS/<stage>.json, when that is set (tests)."""
    folder = os.environ.get(READS_ENV)
    if folder:
        write_text_atomic(Path(folder) / f"{stage}.json", json.dumps(params_read()) + "\n")


def read_yaml(path: Path | str, missing: str) -> Any:
    """The YAML document at `path`; ParamError naming the file when it is absent (`missing` says what it is
    for) or not valid YAML. The one reader of the project's YAML files (params.yaml, paths.yaml)."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: {missing}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamError(f"{path}: not valid YAML ({e})") from e


def load_params(path: Path | str = "params.yaml") -> TrackedParams:
    """Read and validate params.yaml; what the caller reads of it is recorded (see TrackedParams)."""
    tree = read_yaml(path, "params file not found")
    tracked = TrackedParams(validate(tree))
    _LOADED.append(tracked)
    return tracked
