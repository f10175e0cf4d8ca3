"""EM data: the ISBI 2012 neuronal-membrane stack (electron microscopy), its readers, the paper's
geometry, the split by section, and the training / validation sets of every source.

Sources (config key ``data_source``):
    phantom  ``em_phantom.make_phantom`` (em_phantom.py beside this file): EM-like Voronoi cells,
             deterministic from ``seed`` (no data needed)
    sample   the ISBI training set bundled in ``../shared/data/isbi2012`` (developers' machines only)
    real     ``data_path``: the raw ISBI data (``train-volume.tif`` + ``train-labels.tif``, or per-slice
             PNG folders ``image/`` + ``label/``), or the original script's preprocessed layout
             (``data/``, ``mask/``, ``val_img/``, ``val_mask/``; see pre-processing/em_isbi.py)

Geometry (the paper): every 512x512 section resized to 256x256 (bilinear image, nearest label), then
centre-cropped to 200x200 (box 28..228). Split: the LAST ``val_sections`` sections are validation
(30 sections, default 5: train 0-24, validation 25-29); no augmentation (the paper used none for EM).

Labels: ISBI labels are 255 = cell interior, 0 = membrane. ``foreground: cell`` (default, what the
paper scored) makes the cell interior the class 1; ``foreground: membrane`` the membrane. Cells
cover ~77 % of the pixels, so predicting "all cell" already scores ~88 Dice: read scores against it.

Imported by its plain name ``em_data``, with EM_BASE on sys.path (the script's folder; tests and
tools use unetq.paths.base_module).
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np

from unetq.config import Field
from unetq.data import DataBundle, DataError, SliceDataset, binary_mask, center_crop, read_gray, resize, shown_path
from unetq.paths import shared_data_dir

import em_phantom   # beside this file: its folder is on sys.path (unetq.paths.base_module)

FIELDS: tuple[Field, ...] = (
    Field("foreground", "choice", "cell",
          "class scored as 1: cell (interior, white in ISBI; the paper) | membrane", choices=("cell", "membrane")),
    Field("val_sections", "int", 5,
          "the LAST N sections of the stack are validation (30 sections, 5: train 0-24, val 25-29)",
          low=1, high=100000),
    Field("phantom_images", "int", 30, "number of phantom sections generated (data_source: phantom)",
          low=2, high=100000),
)

RESIZED = (256, 256)      # the paper halves the 512x512 sections ...
CROP = (200, 200)         # ... and keeps the centre 200x200 (box 28..228)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
PREPROCESSED_DIRS = ("data", "mask", "val_img", "val_mask")


# --------------------------------------------------------------------------- raw ISBI reading

def natural_key(name: str) -> list:
    """Sort key putting '2' before '10' (digit runs compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _tiff_pages(path: Path) -> list[np.ndarray]:
    """Every page of a (multi-page) TIFF as 2-D uint8 arrays; DataError naming the file otherwise."""
    from PIL import Image, ImageSequence

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")      # PIL warns on truncated pages before failing on them
            pages = []
            for index, page in enumerate(ImageSequence.Iterator(img)):
                if page.mode not in ("L", "1", "P"):
                    raise DataError(f"{path}: page {index}: expected 8-bit grayscale, got mode {page.mode}")
                pages.append(np.array(page.convert("L") if page.mode != "L" else page))
            return pages
    except DataError:
        raise
    except Exception as err:   # a truncated TIFF raises OSError, TypeError ("Missing dimensions"), ...
        raise DataError(f"{path}: unreadable TIFF ({type(err).__name__}: {err})") from None


def _labels_tiff_for(volume: Path) -> Path:
    """The labels TIFF beside a volume TIFF (train-volume.tif -> train-labels.tif)."""
    if "volume" not in volume.name:
        raise DataError(f"{volume}: cannot tell the labels file of this TIFF (expected a name like "
                        f"train-volume.tif beside train-labels.tif)")
    labels = volume.with_name(volume.name.replace("volume", "labels"))
    if not labels.is_file():
        raise DataError(f"{volume}: its labels file {labels} is missing")
    return labels


def _read_tiff_pair(volume: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """Layout (a): multi-page volume + labels TIFFs; names are the page indices."""
    labels_path = _labels_tiff_for(volume)
    images, labels = _tiff_pages(volume), _tiff_pages(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{volume} has {len(images)} pages but {labels_path} has {len(labels)}")
    for index, (image, label) in enumerate(zip(images, labels)):
        if image.shape != label.shape:
            raise DataError(f"page {index}: {volume} is {image.shape} but {labels_path} is {label.shape}")
    sources = [(f"{volume}:page {i}", f"{labels_path}:page {i}") for i in range(len(images))]
    return _stack(images, str(volume)), _stack(labels, str(labels_path)), [str(i) for i in range(len(images))], sources


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem (PNG/TIFF; hidden files ignored)."""
    files = {}
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                raise DataError(f"{folder}: two files named {p.stem!r} ({files[p.stem].name}, {p.name})")
            files[p.stem] = p
    return files


def pair_files(image_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, label) triples matched by file name, in natural order of the name.

    Refuses an empty folder and unpaired files, naming them (the original paired by sort order,
    which silently shifts every pair when one file is missing).
    """
    images, labels = _image_files(image_dir), _image_files(label_dir)
    if not images:
        raise DataError(f"{image_dir}: no PNG/TIFF images")
    for have, other, lacking in ((images, labels, label_dir), (labels, images, image_dir)):
        alone = sorted(set(have) - set(other), key=natural_key)
        if alone:
            shown = ", ".join(have[name].name for name in alone[:5]) + (" ..." if len(alone) > 5 else "")
            raise DataError(f"{have[alone[0]].parent}: {len(alone)} file(s) with no partner in {lacking}: {shown}")
    return [(name, images[name], labels[name]) for name in sorted(images, key=natural_key)]


def _read_pairs(pairs: list[tuple[str, Path, Path]]) -> tuple[list, list]:
    """Read paired image/label files, checking that each pair has one size."""
    images, labels = [], []
    for _, image_path, label_path in pairs:
        image, label = _uint8(read_gray(image_path), image_path), read_gray(label_path)
        if image.shape != label.shape:
            raise DataError(f"size mismatch: {image_path} is {image.shape[1]}x{image.shape[0]} but "
                            f"{label_path} is {label.shape[1]}x{label.shape[0]}")
        images.append(image)
        labels.append(label)
    return images, labels


def _uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """Require 8-bit pixels (ISBI is uint8); anything else is refused rather than guessed at."""
    if array.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit grayscale image, got {array.dtype}")
    return array


def _stack(arrays: list[np.ndarray], where: str, names: list | None = None) -> np.ndarray:
    """Stack same-sized sections; DataError naming the first one of another size."""
    names = names or [f"section {i}" for i in range(len(arrays))]
    for name, a in zip(names[1:], arrays[1:]):
        if a.shape != arrays[0].shape:
            raise DataError(f"{where}: {name} is {a.shape[1]}x{a.shape[0]} but {names[0]} is "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; all sections must have one size")
    return np.stack(arrays)


def _png_folders(path: Path) -> tuple[Path, Path] | None:
    """Layout (b): ``train/image`` + ``train/label`` below path, or ``image`` + ``label`` in it."""
    for root in (path / "train", path):
        if (root / "image").is_dir() and (root / "label").is_dir():
            return root / "image", root / "label"
    return None


def read_isbi_with_sources(path) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """:func:`read_isbi` plus, per section, the (image, label) source it came from: file paths,
    or 'file:page i' for TIFF (pre-processing writes them into its manifest)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise DataError(f"{path}: not an ISBI volume (expected train-volume.tif or a folder)")
        images, labels, names, sources = _read_tiff_pair(path)
    elif path.is_dir() and (path / "train-volume.tif").is_file():
        images, labels, names, sources = _read_tiff_pair(path / "train-volume.tif")
    elif path.is_dir() and _png_folders(path):
        pairs = pair_files(*_png_folders(path))
        image_list, label_list = _read_pairs(pairs)
        images = _stack(image_list, str(pairs[0][1].parent), [p[1].name for p in pairs])
        labels = _stack(label_list, str(pairs[0][2].parent), [p[2].name for p in pairs])
        names, sources = [p[0] for p in pairs], [(str(p[1]), str(p[2])) for p in pairs]
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder")
    else:
        raise DataError(f"{path}: no ISBI data found (expected train-volume.tif + train-labels.tif, "
                        f"train/image/ + train/label/, or image/ + label/)")
    return images, binary_mask(labels, f"{path}: labels"), names, sources


def read_isbi(path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read the raw ISBI 2012 training data, its layout detected automatically.

    Accepts (a) a folder with ``train-volume.tif`` + ``train-labels.tif`` (multi-page TIFF), or the
    path of the volume TIFF itself; (b) per-slice folders ``train/image`` + ``train/label``, or
    ``image`` + ``label`` directly, paired by file name. Sections are in natural order of the file
    name (0, 1, 2, ..., 10). Returns (images uint8 [n,H,W], labels uint8 [n,H,W] with 1 = cell
    interior (source > 127), names: the file stems, or the page indices for TIFF).
    """
    images, labels, names, _ = read_isbi_with_sources(path)
    return images, labels, names


# --------------------------------------------------------------------------- preprocessed layout

def _unit(array: np.ndarray, path: Path) -> np.ndarray:
    """8- or 16-bit pixels as float32 in [0, 1]."""
    if array.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: expected an 8- or 16-bit grayscale image, got {array.dtype}")
    return array.astype(np.float32) / np.iinfo(array.dtype).max


def _read_split(root: Path, image_dir: str, mask_dir: str):
    """One split of the preprocessed layout: (images float32, masks uint8 {0,1}, names)."""
    for sub in (image_dir, mask_dir):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: missing folder {sub}/ (a preprocessed EM set has {', '.join(PREPROCESSED_DIRS)})")
    pairs = pair_files(root / image_dir, root / mask_dir)
    images, masks = [], []
    for _, image_path, mask_path in pairs:
        image, mask = read_gray(image_path), read_gray(mask_path)
        if image.shape != mask.shape:
            raise DataError(f"size mismatch: {image_path} is {image.shape[1]}x{image.shape[0]} but "
                            f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}")
        images.append(_unit(image, image_path))
        masks.append(binary_mask(mask, str(mask_path)))
    return (_stack(images, str(root / image_dir), [p[1].name for p in pairs]),
            _stack(masks, str(root / mask_dir), [p[2].name for p in pairs]), [p[0] for p in pairs])


def read_preprocessed(path) -> dict:
    """Read the original training script's layout: ``data/`` + ``mask/`` (training) and
    ``val_img/`` + ``val_mask/`` (validation) PNG folders, paired by file name.

    Returns {"train_images", "val_images": float32 [n,H,W] in [0,1], "train_masks", "val_masks":
    uint8 {0,1} (source > 127), "train_names", "val_names": file stems in natural order}.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    out = {}
    for split, (image_dir, mask_dir) in (("train", ("data", "mask")), ("val", ("val_img", "val_mask"))):
        images, masks, names = _read_split(root, image_dir, mask_dir)
        out.update({f"{split}_images": images, f"{split}_masks": masks, f"{split}_names": names})
    return out


def is_preprocessed(path) -> bool:
    """Whether ``path`` holds the preprocessed layout (it has ``data/`` and ``val_img/``)."""
    return (Path(path) / "data").is_dir() and (Path(path) / "val_img").is_dir()


def stored_foreground(path) -> str:
    """Which class the masks of a preprocessed folder mark: the ``foreground`` column of its
    manifest.csv (written by pre-processing/em_isbi.py), else 'cell' (white = cell, as ISBI)."""
    manifest = Path(path) / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        values = {row.get("foreground") for row in rows} - {None, ""}
        if len(values) > 1 or not values <= {"cell", "membrane"}:
            raise DataError(f"{manifest}: column 'foreground' must be one of cell, membrane, got {sorted(values)}")
        if values:
            return values.pop()
    return "cell"


# --------------------------------------------------------------------------- geometry and split

def paper_geometry(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's geometry: each section resized to 256x256 (bilinear image, nearest label), then
    centre-cropped to 200x200 (box 28..228 of the 256 grid).

    images: uint8 [n,H,W] (scaled by 1/255) or float in [0,1]; labels: [n,H,W] (kept as values).
    Returns (images float32 [n,200,200] in [0,1], labels uint8 [n,200,200]).
    """
    scale = 1.0 / 255.0 if np.asarray(images).dtype == np.uint8 else 1.0
    out_images = [center_crop(resize(np.asarray(im, np.float32), RESIZED), CROP) * scale for im in images]
    out_labels = [center_crop(resize(np.asarray(lb, np.uint8), RESIZED, nearest=True), CROP) for lb in labels]
    return (np.clip(np.stack(out_images), 0.0, 1.0).astype(np.float32),
            np.stack(out_labels).astype(np.uint8))


def split_sections(n: int, val_sections: int) -> tuple[list[int], list[int]]:
    """Deterministic split by section: the LAST ``val_sections`` of ``n`` are validation.

    For 30 sections and 5: train 0-24, validation 25-29 (neighbouring sections are correlated, so a
    contiguous block is held out rather than a random pick).
    """
    if not 1 <= val_sections < n:
        raise DataError(f"key 'val_sections': {val_sections} does not fit a stack of {n} sections; "
                        f"allowed: 1 to {n - 1}")
    return list(range(n - val_sections)), list(range(n - val_sections, n))


# --------------------------------------------------------------------------- build_datasets

def _span(indices: list[int]) -> str:
    """[25, 26, 27] -> "25-27" (for descriptions)."""
    return f"{indices[0]}-{indices[-1]}" if len(indices) > 1 else str(indices[0])


def _floor_notes(train_masks: np.ndarray, val_masks: np.ndarray, foreground: str) -> list[str]:
    """The foreground fractions and the Dice of predicting 'all foreground' (mean over slices)."""
    per_slice = val_masks.reshape(len(val_masks), -1).mean(axis=1)
    floor = float(np.mean(2 * per_slice / (1 + per_slice)))
    return [f"foreground={foreground}: {100 * train_masks.mean():.1f} % of training pixels, "
            f"{100 * val_masks.mean():.1f} % of validation pixels",
            f"predicting all-{foreground} scores Dice {100 * floor:.1f} on validation: the floor to beat"]


def _load_raw(cfg, root: Path) -> tuple:
    """Raw ISBI at ``root``: read, paper geometry, split; returns (train, val, names, text)."""
    images, labels, names = read_isbi(root)
    n, shape = len(images), images.shape[1:]
    train_idx, val_idx = split_sections(n, cfg.val_sections)
    images, labels = paper_geometry(images, labels)
    text = (f"ISBI 2012 ({shown_path(root)}): {n} sections {shape[0]}->{RESIZED[0]}->crop {CROP[0]}, "
            f"train {_span(train_idx)} / val {_span(val_idx)}")
    pick = lambda idx: (images[idx], labels[idx], [names[i] for i in idx])  # noqa: E731
    return pick(train_idx), pick(val_idx), text, []


def _load_preprocessed(cfg, root: Path) -> tuple:
    """The original script's preprocessed folders at ``root`` (its own split, cfg.val_sections unused)."""
    data = read_preprocessed(root)
    stored = stored_foreground(root)
    if stored != "cell":  # bring masks back to the cell convention; foreground is applied later
        data["train_masks"], data["val_masks"] = 1 - data["train_masks"], 1 - data["val_masks"]
    text = (f"ISBI 2012 preprocessed ({shown_path(root)}): {len(data['train_images'])} train / "
            f"{len(data['val_images'])} val images as stored (data/, val_img/)")
    notes = ["val_sections is not used: the preprocessed folders carry their own split"]
    return ((data["train_images"], data["train_masks"], data["train_names"]),
            (data["val_images"], data["val_masks"], data["val_names"]), text, notes)


def _load_phantom(cfg) -> tuple:
    """The phantom, split like the ISBI stack."""
    images, labels = em_phantom.make_phantom(cfg.phantom_images, seed=cfg.seed)
    train_idx, val_idx = split_sections(len(images), cfg.val_sections)
    names = [str(i) for i in range(len(images))]
    text = (f"EM phantom (seed {cfg.seed}): {len(images)} synthetic sections {CROP[0]}x{CROP[1]}, "
            f"train {_span(train_idx)} / val {_span(val_idx)}")
    pick = lambda idx: (images[idx], labels[idx], [names[i] for i in idx])  # noqa: E731
    return pick(train_idx), pick(val_idx), text, []


def _sample_root(cfg) -> Path:
    """data_path when set, else the shared sample; a clear DataError when absent."""
    root = cfg.path("data_path") or shared_data_dir() / "isbi2012"
    if not root.exists():
        raise DataError(f"{root}: the ISBI sample data is missing (it exists only beside the developers' "
                        f"checkout, in ../shared/data); use data_source: phantom, or data_source: real "
                        f"with data_path")
    return root


def _load(cfg) -> tuple:
    """Dispatch on cfg.data_source; returns (train, val, text, notes) in the cell convention."""
    if cfg.data_source == "phantom":
        return _load_phantom(cfg)
    root = _sample_root(cfg) if cfg.data_source == "sample" else cfg.path("data_path")
    if root is None:
        raise DataError("key 'data_path' is required when data_source is 'real'")
    if not root.exists():
        raise DataError(f"{root}: no such file or folder (key 'data_path')")
    return _load_preprocessed(cfg, root) if is_preprocessed(root) else _load_raw(cfg, root)


def build_datasets(cfg) -> DataBundle:
    """The EM training and validation sets for ``cfg`` (data_source, data_path, seed, foreground,
    val_sections, phantom_images), as SliceDatasets in a DataBundle.

    No training transform: the paper's EM pipeline used no augmentation. ``foreground: membrane``
    swaps the classes (mask = 1 - cell). Notes give the foreground fractions and the all-foreground
    Dice floor on validation.
    """
    train, val, text, notes = _load(cfg)
    flip = cfg.foreground == "membrane"
    train_masks = 1 - train[1] if flip else train[1]
    val_masks = 1 - val[1] if flip else val[1]
    notes = notes + _floor_notes(train_masks, val_masks, cfg.foreground)
    return DataBundle(
        train=SliceDataset(train[0], train_masks, train[2], seed=cfg.seed),
        val=SliceDataset(val[0], val_masks, val[2], seed=cfg.seed),
        source=cfg.data_source,
        description=f"{text}, foreground={cfg.foreground}",
        notes=notes,
    )
