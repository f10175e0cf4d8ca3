"""Tests of EM_BASE/em_data.py (readers, geometry, split, build_datasets), EM_BASE/em_phantom.py and
pre-processing/em_isbi.py; the bundled ISBI sample is used when present and skipped otherwise."""

import csv
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unetq.paths import base_module
from unetq.config import validate
from unetq.data import DataBundle, SliceDataset, center_crop, resize
from unetq.paths import PROJECT_ROOT

em = base_module("EM_BASE")
em_phantom = base_module("EM_BASE", "em_phantom")
SCRIPT = PROJECT_ROOT / "pre-processing" / "em_isbi.py"


def make_cfg(**keys):
    """A real validated EM config (the path training takes)."""
    return validate(keys, extra_fields=em.FIELDS, dataset="em")


def raw_stack(n=6, size=64, seed=0):
    """A small random raw stack: images uint8, labels 0/255 (255 = cell)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = np.where(rng.random((n, size, size)) < 0.75, 255, 0).astype(np.uint8)
    return images, labels


def write_png_folders(root, images, labels, names=None):
    """Per-slice layout root/image/<name>.png + root/label/<name>.png."""
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for i, (image, label) in enumerate(zip(images, labels)):
        name = names[i] if names else str(i)
        Image.fromarray(image).save(root / "image" / f"{name}.png")
        Image.fromarray(label).save(root / "label" / f"{name}.png")


def write_tiff(path, stack):
    """A multi-page TIFF, one page per section."""
    pages = [Image.fromarray(a) for a in stack]
    pages[0].save(path, save_all=True, append_images=pages[1:])


# --------------------------------------------------------------------------- phantom

def test_phantom_deterministic_and_seeded():
    a_img, a_lab = em_phantom.make_phantom(4, seed=3)
    b_img, b_lab = em_phantom.make_phantom(4, seed=3)
    c_img, c_lab = em_phantom.make_phantom(4, seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lab, c_lab)
    # section i depends on (seed, i) only: growing n keeps the first sections
    more_img, _ = em_phantom.make_phantom(6, seed=3)
    assert np.array_equal(more_img[:4], a_img)


def test_phantom_shape_range_and_cell_fraction():
    images, labels = em_phantom.make_phantom(10, seed=0)
    assert images.shape == labels.shape == (10, 200, 200)
    assert images.dtype == np.float32 and labels.dtype == np.uint8
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels)) == {0, 1}
    assert 0.70 < labels.mean() < 0.85  # ISBI: ~77 % cell
    # membranes are dark, cells bright: the texture carries the label
    assert images[labels == 0].mean() < images[labels == 1].mean() - 0.15


def test_phantom_other_size():
    images, labels = em_phantom.make_phantom(2, size=96, seed=1)
    assert images.shape == labels.shape == (2, 96, 96)


# --------------------------------------------------------------------------- read_isbi

def test_read_isbi_sample(shared_data):
    root = shared_data / "isbi2012"
    if not root.is_dir():
        pytest.skip("isbi2012 sample absent")
    images, labels, names = em.read_isbi(root)
    assert images.shape == labels.shape == (30, 512, 512)
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    assert names == [str(i) for i in range(30)]  # natural order, not 0, 1, 10, 11, ...
    assert set(np.unique(labels)) == {0, 1}
    assert 0.74 < labels.mean() < 0.82
    first = np.array(Image.open(root / "train" / "image" / "10.png"))
    assert np.array_equal(images[10], first)


def test_read_isbi_tiff_pair(tmp_path):
    images, labels = raw_stack(n=4)
    write_tiff(tmp_path / "train-volume.tif", images)
    write_tiff(tmp_path / "train-labels.tif", labels)
    for path in (tmp_path, tmp_path / "train-volume.tif"):
        got_images, got_labels, names = em.read_isbi(path)
        assert np.array_equal(got_images, images)
        assert np.array_equal(got_labels, (labels > 127).astype(np.uint8))
        assert names == ["0", "1", "2", "3"]


def test_read_isbi_tiff_missing_labels_and_page_count(tmp_path):
    images, labels = raw_stack(n=3)
    write_tiff(tmp_path / "train-volume.tif", images)
    with pytest.raises(em.DataError, match="train-labels.tif"):
        em.read_isbi(tmp_path)
    write_tiff(tmp_path / "train-labels.tif", labels[:2])
    with pytest.raises(em.DataError, match=r"3 pages .*train-labels.tif has 2"):
        em.read_isbi(tmp_path)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_a_truncated_tiff_is_one_clear_error(tmp_path, keep, recwarn):
    images, labels = raw_stack(n=4)
    write_tiff(tmp_path / "train-volume.tif", images)
    write_tiff(tmp_path / "train-labels.tif", labels)
    data = (tmp_path / "train-volume.tif").read_bytes()
    (tmp_path / "train-volume.tif").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(em.DataError, match=r"train-volume.tif: unreadable TIFF"):
        em.read_isbi(tmp_path)
    assert not [w for w in recwarn if "PIL" in str(w.filename)]     # no stray PIL warning line either


def test_masks_0_1_are_foreground_and_other_values_refused(tmp_path):
    images, labels = raw_stack(n=2)
    write_png_folders(tmp_path / "a", images, (labels > 127).astype(np.uint8))      # a 0/1 label set
    assert np.array_equal(em.read_isbi(tmp_path / "a")[1], (labels > 127).astype(np.uint8))
    grey = labels.copy()
    grey[0, 0, :3] = (7, 100, 200)
    write_png_folders(tmp_path / "b", images, grey)
    with pytest.raises(em.DataError, match=r"0/255 or 0/1 only, found values 0, 7, 100, 200, 255"):
        em.read_isbi(tmp_path / "b")


def test_read_isbi_png_natural_order(tmp_path):
    names = ["0", "1", "2", "10", "11"]
    images, labels = raw_stack(n=5)
    write_png_folders(tmp_path, images, labels, names)
    got_images, _, got_names = em.read_isbi(tmp_path)  # image/ + label/ directly
    assert got_names == names
    assert np.array_equal(got_images[3], images[3])  # "10" is the fourth section


def test_read_isbi_png_unpaired(tmp_path):
    images, labels = raw_stack(n=3)
    write_png_folders(tmp_path / "train", images, labels)
    (tmp_path / "train" / "label" / "2.png").unlink()
    with pytest.raises(em.DataError, match=r"no partner.*2\.png"):
        em.read_isbi(tmp_path)


def test_read_isbi_png_size_mismatch(tmp_path):
    images, labels = raw_stack(n=2)
    write_png_folders(tmp_path, images, labels)
    Image.fromarray(labels[1][:40]).save(tmp_path / "label" / "1.png")
    with pytest.raises(em.DataError) as err:
        em.read_isbi(tmp_path)
    assert "image/1.png" in str(err.value) and "label/1.png" in str(err.value)


def test_read_isbi_nothing_there(tmp_path):
    with pytest.raises(em.DataError, match="no ISBI data found"):
        em.read_isbi(tmp_path)


# --------------------------------------------------------------------------- read_preprocessed

def write_preprocessed(root, n_train=3, n_val=2, size=32):
    """The original script's layout with 0/255 masks named by section index."""
    images, labels = raw_stack(n=n_train + n_val, size=size)
    for i in range(n_train + n_val):
        image_dir, mask_dir = ("data", "mask") if i < n_train else ("val_img", "val_mask")
        for sub, array in ((image_dir, images[i]), (mask_dir, labels[i])):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / sub / f"{i}.png")
    return images, labels


def test_read_preprocessed(tmp_path):
    images, labels = write_preprocessed(tmp_path)
    data = em.read_preprocessed(tmp_path)
    assert data["train_names"] == ["0", "1", "2"] and data["val_names"] == ["3", "4"]
    assert data["train_images"].dtype == np.float32
    assert np.allclose(data["train_images"], images[:3] / 255.0)
    assert np.array_equal(data["val_masks"], (labels[3:] > 127).astype(np.uint8))


def test_read_preprocessed_unpaired(tmp_path):
    write_preprocessed(tmp_path)
    (tmp_path / "val_img" / "4.png").rename(tmp_path / "val_img" / "7.png")
    with pytest.raises(em.DataError, match=r"7\.png"):
        em.read_preprocessed(tmp_path)


def test_read_preprocessed_missing_folder(tmp_path):
    write_preprocessed(tmp_path)
    for f in (tmp_path / "val_mask").iterdir():
        f.unlink()
    (tmp_path / "val_mask").rmdir()
    with pytest.raises(em.DataError, match="val_mask"):
        em.read_preprocessed(tmp_path)


# --------------------------------------------------------------------------- geometry and split

def test_paper_geometry_box():
    gradient = np.tile(np.arange(512, dtype=np.float32) / 511.0, (512, 1))  # value = column
    labels = np.zeros((512, 512), np.uint8)
    labels[:, 56:] = 1  # 256-grid column 28 = the crop's first column
    images, crops = em.paper_geometry(gradient[None], labels[None])
    assert images.shape == crops.shape == (1, 200, 200)
    assert images.dtype == np.float32 and crops.dtype == np.uint8
    # 256-grid column j is the mean of 512-columns 2j, 2j+1: the crop starts at j = 28
    assert images[0, 100, 0] == pytest.approx((2 * 28 + 0.5) / 511.0, abs=1e-4)
    assert images[0, 100, 199] == pytest.approx((2 * 227 + 0.5) / 511.0, abs=1e-4)
    assert crops[0].all()


def test_paper_geometry_equals_resize_then_crop():
    images, labels = raw_stack(n=2, size=512)
    out_images, out_labels = em.paper_geometry(images, labels)
    for i in range(2):
        small = resize(images[i], (256, 256)) / 255.0
        assert np.allclose(out_images[i], small[28:228, 28:228], atol=1e-6)
        assert np.array_equal(out_labels[i], center_crop(resize(labels[i], (256, 256), nearest=True), (200, 200)))
        assert set(np.unique(out_labels[i])) <= {0, 255}  # nearest: no invented label values


def test_split_sections():
    train, val = em.split_sections(30, 5)
    assert train == list(range(25)) and val == [25, 26, 27, 28, 29]
    with pytest.raises(em.DataError, match="val_sections"):
        em.split_sections(30, 30)


# --------------------------------------------------------------------------- build_datasets

def test_fields_in_config():
    cfg = make_cfg()
    assert (cfg.foreground, cfg.val_sections, cfg.phantom_images) == ("cell", 5, 30)


def test_build_phantom():
    bundle = em.build_datasets(make_cfg(data_source="phantom", phantom_images=8, val_sections=2, seed=1))
    assert isinstance(bundle, DataBundle) and bundle.source == "phantom"
    assert isinstance(bundle.train, SliceDataset) and bundle.train.transform is None
    assert (len(bundle.train), len(bundle.val)) == (6, 2)
    assert bundle.val.names == ["6", "7"]
    item = bundle.train[0]
    assert item["image"].shape == item["mask"].shape == (1, 200, 200)
    assert "train 0-5 / val 6-7" in bundle.description and "foreground=cell" in bundle.description
    images, labels = em_phantom.make_phantom(8, seed=1)
    assert np.array_equal(bundle.val.masks, labels[6:])
    membrane = em.build_datasets(make_cfg(phantom_images=8, val_sections=2, seed=1, foreground="membrane"))
    assert np.array_equal(membrane.val.masks, 1 - labels[6:])


def test_build_val_sections_too_large():
    with pytest.raises(em.DataError, match="val_sections"):
        em.build_datasets(make_cfg(phantom_images=5, val_sections=5))


def test_build_sample(shared_data):
    if not (shared_data / "isbi2012").is_dir():
        pytest.skip("isbi2012 sample absent")
    bundle = em.build_datasets(make_cfg(data_source="sample"))
    assert bundle.source == "sample"
    assert (len(bundle.train), len(bundle.val)) == (25, 5)
    assert bundle.val.names == ["25", "26", "27", "28", "29"]
    assert bundle.train.images.shape == (25, 200, 200)
    assert "512->256->crop 200" in bundle.description
    assert any("Dice 88.8" in note for note in bundle.notes)  # the all-cell floor on sections 25-29


def test_build_sample_missing(tmp_path):
    with pytest.raises(em.DataError, match="phantom"):
        em.build_datasets(make_cfg(data_source="sample", data_path=str(tmp_path / "absent")))


def test_build_real_raw_and_preprocessed(tmp_path):
    images, labels = raw_stack(n=6, size=64)
    write_tiff(tmp_path / "train-volume.tif", images)
    write_tiff(tmp_path / "train-labels.tif", labels)
    raw = em.build_datasets(make_cfg(data_source="real", data_path=str(tmp_path), val_sections=2))
    assert (len(raw.train), len(raw.val)) == (4, 2) and raw.source == "real"
    pre = tmp_path / "pre"
    write_preprocessed(pre)
    bundle = em.build_datasets(make_cfg(data_source="real", data_path=str(pre)))
    assert (len(bundle.train), len(bundle.val)) == (3, 2)


# --------------------------------------------------------------------------- pre-processing script

def run_script(*args):
    """The script as a user runs it (a fresh interpreter)."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def script_main(*args):
    """The script's main() in this process (saves the interpreter start-up and torch import)."""
    spec = importlib.util.spec_from_file_location("em_isbi_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


def test_script_end_to_end(tmp_path):
    images, labels = raw_stack(n=6, size=512)
    write_png_folders(tmp_path / "raw" / "train", images, labels)
    out = tmp_path / "out"
    done = run_script(tmp_path / "raw", out, "--val-sections", 2)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"{i}.png" for i in range(4)]
    assert sorted(p.name for p in (out / "val_mask").iterdir()) == ["4.png", "5.png"]
    expected_images, expected_labels = em.paper_geometry(images, (labels > 127).astype(np.uint8))
    mask = np.array(Image.open(out / "val_mask" / "5.png"))
    assert mask.shape == (200, 200) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask > 127, expected_labels[5] == 1)
    image = np.array(Image.open(out / "data" / "0.png")) / 255.0
    assert np.abs(image - expected_images[0]).max() <= 0.5 / 255 + 1e-6
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["section"], r["split"]) for r in rows] == [
        ("0", "train"), ("1", "train"), ("2", "train"), ("3", "train"), ("4", "val"), ("5", "val")]
    assert rows[5]["image_source"].endswith("image/5.png") and rows[0]["foreground"] == "cell"
    # what training reads back equals the direct pipeline
    data = em.read_preprocessed(out)
    assert np.array_equal(data["val_masks"], expected_labels[4:])
    # a second run into the now non-empty folder is refused and writes nothing
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    again = run_script(tmp_path / "raw", out)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_script_membrane_roundtrip_and_bad_input(tmp_path, capsys):
    images, labels = raw_stack(n=4, size=64)
    write_tiff(tmp_path / "train-volume.tif", images)
    write_tiff(tmp_path / "train-labels.tif", labels)
    out = tmp_path / "out"
    assert script_main(tmp_path, out, "--val-sections", 1, "--foreground", "membrane") == 0
    # masks store membrane; build_datasets reads the manifest and still honours cfg.foreground
    cell = em.build_datasets(make_cfg(data_source="real", data_path=str(out)))
    _, expected = em.paper_geometry(images, (labels > 127).astype(np.uint8))
    assert np.array_equal(cell.val.masks, expected[3:])
    assert script_main(tmp_path / "nothing", tmp_path / "out2") == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
