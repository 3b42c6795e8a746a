"""KolektorSDD2 (the paper's data set): reading the official layout, and getting the official archive onto the
machine — from a local zip (checked by MD5 and extracted safely) or by download, with an error that says how
to get it when neither works (our build machines cannot reach the data set's site)."""

from __future__ import annotations

import shutil
import stat
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from exdd_core.data.imageio import image_size_of, load_mask
from exdd_core.data.records import ImageRecord
from exdd_core.runtime.atomic import atomic_path
from exdd_core.runtime.errors import InputError, MissingResourceError, ParamError
from exdd_core.runtime.hashing import file_digest

KSDD2_URL = "https://go.vicos.si/kolektorsdd2"
KSDD2_MD5 = "1ed0f628122776ace4965afa30dfe316"
SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT_S = 10


def _image_files(folder: Path) -> list[Path]:
    """The images of a split folder: PNGs that are not GT masks and not the stray "(copy)" duplicates."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() == ".png"
        and not p.stem.endswith("_GT")
        and "(copy)" not in p.name
    )


def read_ksdd2(root: Path, split: str) -> list[ImageRecord]:
    """Records of one split of an extracted KolektorSDD2 folder (`root/<split>/<id>.png` + `<id>_GT.png`).

    An image is defective (label 1) iff its GT mask has any non-zero pixel; normal images keep no mask path."""
    if split not in SPLITS:
        raise ParamError(f"KSDD2 split must be one of {SPLITS}, got {split!r}")
    folder = Path(root) / split
    if not folder.is_dir():
        raise InputError(f"{folder}: KSDD2 split folder not found (expected {root}/{split}/<id>.png)")
    images = _image_files(folder)
    if not images:
        raise InputError(f"{folder}: no KSDD2 images found (expected <id>.png with <id>_GT.png beside them)")
    records = []
    for image_path in images:
        gt = image_path.with_name(f"{image_path.stem}_GT.png")
        if not gt.is_file():
            raise InputError(f"{image_path}: ground-truth mask {gt.name} not found beside it")
        label = int(load_mask(gt, image_size_of_source=image_size_of(image_path)).any())
        records.append(ImageRecord(image_path.stem, split, label, image_path, gt if label else None))
    return records


def file_md5(path: Path) -> str:
    """Hex MD5 of a file (the checksum the KSDD2 authors publish)."""
    return file_digest(path, "md5")


def _has_splits(folder: Path) -> bool:
    return all((folder / s).is_dir() for s in SPLITS)


def _how_to_get(zip_path: Path) -> str:
    """The instructions every 'KSDD2 is not here' error carries."""
    return (
        f"Download KolektorSDD2.zip from {KSDD2_URL} on a machine with internet and put it at {zip_path} "
        f"(or set data.root to an already extracted folder holding train/ and test/). Expected MD5: {KSDD2_MD5}. "
        "If your team keeps it in a DVC remote, `dvc pull` can serve it to this machine."
    )


def download_ksdd2(zip_path: Path) -> Path:
    """Try to download the official archive to `zip_path`; MissingResourceError (with instructions) if not."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(zip_path) as tmp:
            with urllib.request.urlopen(KSDD2_URL, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f)
            if not zipfile.is_zipfile(tmp):
                raise MissingResourceError(
                    f"KolektorSDD2 download from {KSDD2_URL} did not return a zip archive. "
                    f"{_how_to_get(zip_path)}"
                )
    except (OSError, ValueError) as e:  # URLError, HTTPError and socket timeouts are all OSErrors
        raise MissingResourceError(
            f"KolektorSDD2 could not be downloaded ({e}). {_how_to_get(zip_path)}"
        ) from e
    return zip_path


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_members(zf: zipfile.ZipFile, zip_path: Path, target: Path) -> None:
    """Refuse archives with members that would land outside `target` (../, absolute paths) or symlinks."""
    base = target.resolve()
    for info in zf.infolist():
        name = info.filename
        dest = (base / name).resolve()
        if (
            PurePosixPath(name).is_absolute()
            or ".." in PurePosixPath(name).parts
            or not dest.is_relative_to(base)
        ):
            raise InputError(f"{zip_path}: refusing member {name!r}, which would be written outside {target}")
        if _is_symlink(info):
            raise InputError(f"{zip_path}: refusing member {name!r}, which is a symbolic link")


def extract_zip_safely(zip_path: Path, target: Path) -> None:
    """Extract `zip_path` into `target` after checking every member (see `_check_members`)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            _check_members(zf, zip_path, target)
            zf.extractall(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as e:
        raise InputError(f"{zip_path}: cannot extract as a zip archive ({e})") from e


def _splits_folder(extracted: Path) -> Path | None:
    """Where train/ and test/ are in an extracted archive: at its top, or under its single top folder."""
    if _has_splits(extracted):
        return extracted
    tops = [p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith("__MACOSX")]
    if len(tops) == 1 and _has_splits(tops[0]):
        return tops[0]
    return None


def _install_from_zip(zip_path: Path, root: Path, md5: str) -> Path:
    """Check the archive's MD5, extract it into a temporary folder beside `root`, then move train/ and test/
    into `root` (so an interrupted extraction never leaves a half-filled root that looks complete)."""
    actual = file_md5(zip_path)
    if actual != md5:
        raise InputError(f"{zip_path}: MD5 is {actual}, expected {md5} (incomplete or different download?)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}.extract-", dir=root.parent) as tmp:
        extract_zip_safely(zip_path, Path(tmp))
        found = _splits_folder(Path(tmp))
        if found is None:
            raise InputError(
                f"{zip_path}: archive holds no train/ and test/ folders (at its top or one level down)"
            )
        root.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            if (root / split).exists():
                shutil.rmtree(root / split)
            shutil.move(str(found / split), str(root / split))
    return root


def ksdd2_folder(raw: Path, extract_to: Path) -> Path:
    """The KSDD2 folder (holding train/ and test/) for `data.root` = `raw`: `raw` itself, its single
    subfolder (an extracted archive), or else the official `KolektorSDD2.zip` inside `raw`, checked and
    extracted to `extract_to` (or downloaded into `raw` first when it is missing)."""
    raw = Path(raw)
    if not raw.is_dir():
        raise InputError(
            f"data.root = {raw}: no such folder. Put KolektorSDD2.zip (or its extracted train/ and test/) "
            f"there, or point data.root at the folder that holds them"
        )
    found = _splits_folder(raw)
    if found is not None:
        return found
    return ensure_ksdd2(extract_to, raw / "KolektorSDD2.zip")


def ensure_ksdd2(root: Path, zip_path: Path | None = None, *, md5: str = KSDD2_MD5) -> Path:
    """An extracted KolektorSDD2 folder at `root`: already there, from `zip_path`, or downloaded.

    `zip_path` defaults to `<root's parent>/KolektorSDD2.zip`; `md5` is the official archive's checksum."""
    root = Path(root)
    if _has_splits(root):
        return root
    zip_path = Path(zip_path) if zip_path is not None else root.parent / "KolektorSDD2.zip"
    if not zip_path.is_file():
        download_ksdd2(zip_path)
    return _install_from_zip(zip_path, root, md5)
