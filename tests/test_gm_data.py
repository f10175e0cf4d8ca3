"""GM_BASE: the challenge NIfTI reader of gm_nifti.py (names, rater pairing), gm_data.py (split, slice
filter, spacing), their error messages, the phantom of gm_phantom.py and the bundled SCT sample
(skipped when absent)."""

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from unetq.paths import base_module
from unetq.config import ConfigError, validate
from unetq.data import DataError
from unetq.paths import PROJECT_ROOT

gm = base_module("GM_BASE")
gm_nifti = base_module("GM_BASE", "gm_nifti")
gm_phantom = base_module("GM_BASE", "gm_phantom")

TINY = {"sites": "1,3", "phantom_subjects": 3, "phantom_slices": 3, "train_subjects": "1-2", "val_subjects": "3",
        "crop_size": 64, "resample_mm": 0}


def make_cfg(**keys):
    """A real validated GM config (the path training takes)."""
    return validate(keys, extra_fields=gm.FIELDS, dataset="gm")


def save(path, array, zooms=(0.5, 0.5, 5.0), affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([*zooms, 1.0]) if affine is None else affine), str(path))


def disc_volume(shape=(40, 40, 4), radius=6, seed=0):
    """A noisy image with a bright disc and its mask (1 = the disc), per slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < radius ** 2)
    mask = np.repeat(disc[:, :, None], shape[2], axis=2).astype(np.uint8)
    image = (100 + 50 * mask + rng.normal(0, 5, shape)).astype(np.int16)
    return image, mask


def challenge_folder(root, sites=(1,), subjects=range(1, 4), raters=(1, 2), shape=(40, 40, 4)):
    """A small challenge-layout folder; returns it."""
    root.mkdir(exist_ok=True)
    for site in sites:
        for subject in subjects:
            image, mask = disc_volume(shape, seed=site * 100 + subject)
            save(root / f"site{site}-sc{subject:02d}-image.nii.gz", image)
            for r in raters:
                save(root / f"site{site}-sc{subject:02d}-mask-r{r}.nii.gz", mask)
    return root


# --------------------------------------------------------------------------- ids and keys

def test_ids_parse_and_format():
    assert gm_nifti.parse_ids("1-3, 5") == [1, 2, 3, 5] and gm_nifti.parse_ids(7) == [7]
    assert gm_nifti.parse_ids([10, 9]) == [9, 10]
    assert gm_nifti.format_ids([5, 1, 2, 3, 9, 10]) == "1-3,5,9-10"
    for bad in ("0", "3-1", "a", "", "1-100"):
        with pytest.raises(ValueError):
            gm_nifti.parse_ids(bad)


def test_fields_in_config_defaults_and_errors():
    cfg = make_cfg(val_subjects=[9, 10], sites=2)
    assert (cfg.sites, cfg.train_subjects, cfg.val_subjects, cfg.rater_mode, cfg.resample_mm, cfg.crop_size) == \
        ("2", "1-8", "9-10", "each", 0.25, 200)
    assert make_cfg().sites == "all"
    with pytest.raises(ConfigError, match="'train_subjects': 'all' is not a list of ids; allowed: ids 1-99"):
        make_cfg(train_subjects="all")
    with pytest.raises(ConfigError, match="'rater_mode'"):
        make_cfg(rater_mode="vote")


# --------------------------------------------------------------------------- phantom

def test_phantom_files_names_geometry_and_determinism(tmp_path):
    paths = gm_phantom.write_phantom(tmp_path / "a", seed=1, subjects=2, slices=3, sites=[1, 4])
    names = sorted(p.name for p in paths)
    expected = sorted([f"site{s}-sc{x:02d}-image.nii.gz" for s in (1, 4) for x in (1, 2, 3)]
                      + [f"site{s}-sc{x:02d}-mask-r{r}.nii.gz" for s in (1, 4) for x in (1, 2) for r in range(1, 5)])
    assert names == expected                                        # sc03: an unlabeled "test" image
    for site in (1, 4):
        img = nib.load(str(tmp_path / "a" / f"site{site}-sc01-image.nii.gz"))
        spacing, thickness, shape = gm_phantom.PHANTOM_SITES[site]
        assert img.shape == (*shape, 3) and np.allclose(img.header.get_zooms(), (spacing, spacing, thickness))
    again = gm_phantom.write_phantom(tmp_path / "b", seed=1, subjects=2, slices=3, sites=[1, 4])
    other = gm_phantom.write_phantom(tmp_path / "c", seed=2, subjects=2, slices=3, sites=[1, 4])
    read = lambda p: np.asanyarray(nib.load(str(p)).dataobj)  # noqa: E731
    assert all(np.array_equal(read(p), read(q)) for p, q in zip(paths, again))
    assert not np.array_equal(read(paths[0]), read(other[0]))


def test_phantom_command_line_usage_and_files(tmp_path):
    """``python gm_phantom.py DIR [SEED]`` runs as a script (its folder on sys.path finds gm_nifti)."""
    script = [sys.executable, str(PROJECT_ROOT / "GM_BASE" / "gm_phantom.py")]
    bad = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage: python gm_phantom.py DIR [SEED]" in bad.stderr
    assert gm_phantom.main([str(tmp_path / "p"), "3", "extra"]) == 2      # one argument too many
    assert not (tmp_path / "p").exists()


def test_phantom_anatomy_and_raters():
    subj = gm_phantom.phantom_subject(seed=0, site=3, subject=1, n_slices=4)
    image, masks = subj["image"].astype(float), subj["masks"]
    assert set(masks) == {1, 2, 3, 4} and all(not m[:, :, 0].any() for m in masks.values())  # slice 0 unannotated
    gm1 = masks[1][:, :, 2] == 1
    area_mm2 = gm1.sum() * 0.25 ** 2
    assert 10 < area_mm2 < 40                                       # a cervical GM cross-section is ~15-30 mm^2
    # gray matter is brighter than the white matter around it (T2*)
    around = dilate(gm1, 4) & ~dilate(gm1, 1)
    assert image[:, :, 2][gm1].mean() > image[:, :, 2][around].mean() * 1.1
    # raters agree closely but not perfectly
    for r in (2, 3, 4):
        other = masks[r][:, :, 2] == 1
        dice = 2 * (gm1 & other).sum() / (gm1.sum() + other.sum())
        assert 0.7 < dice < 1.0
    wm = gm_phantom.phantom_subject(seed=0, site=4, subject=1, n_slices=3)["masks"][1]
    assert set(np.unique(wm)) == {0, 1, 2}                          # site 4 also marks white matter


def dilate(mask, n):
    """``mask`` grown by ``n`` pixels."""
    return ndimage.binary_dilation(mask, iterations=n)


# --------------------------------------------------------------------------- reader on phantom files

def test_build_phantom_split_raters_filter_and_spacing():
    bundle = gm.build_datasets(make_cfg(**TINY))
    train, val = bundle.train, bundle.val
    # 2 sites x 2 train subjects x 3 slices x 4 raters, slice 0 unannotated -> dropped
    assert len(train) == 2 * 2 * 2 * 4 and len(val) == 2 * 1 * 3 * 4
    assert all(n.split("-")[1] in ("sc01", "sc02") for n in train.names)
    assert all(n.split("-")[1] == "sc03" for n in val.names)
    assert {n.split("-")[2] for n in train.names} == {"r1", "r2", "r3", "r4"}
    assert sum(not m.any() for m in val.masks) == 2 * 4             # validation keeps the empty slices
    assert all(m.any() for m in train.masks)
    assert train.images.shape[1:] == (64, 64)
    # native spacing per site (resample_mm 0): site 1 0.5 mm, site 3 0.25 mm
    by_site = {n.split("-")[0]: tuple(s) for n, s in zip(val.names, val.spacings)}
    assert by_site == {"site1": (0.5, 0.5), "site3": (0.25, 0.25)}
    assert "training: 32 pairs kept; dropped 16 without gray matter" in " ".join(bundle.notes)
    assert bundle.source == "phantom" and "written as challenge NIfTI files" in bundle.description


def test_build_phantom_resampled_spacing_is_that_of_the_network_input():
    native = gm.build_datasets(make_cfg(**{**TINY, "crop_size": 256, "rater_mode": "majority"}))
    fine = gm.build_datasets(make_cfg(**{**TINY, "crop_size": 256, "rater_mode": "majority", "resample_mm": 0.25}))
    assert np.allclose(fine.val.spacings, 0.25)
    # the same gray matter, measured in mm^2 with each set's own spacing
    area = lambda ds: [m.sum() * sp[0] * sp[1] for m, sp in zip(ds.masks, ds.spacings)]  # noqa: E731
    a, b = np.array(area(native.val)), np.array(area(fine.val))
    assert np.all(np.abs(a - b) <= 0.1 * np.maximum(a, 1))


def test_target_is_gray_matter_only_and_values_are_logged(tmp_path):
    root = challenge_folder(tmp_path / "wm", raters=(1,))
    image, mask = disc_volume()
    mask = mask + (np.roll(mask, 12, axis=0) * 2)                   # white matter = 2 beside the GM
    save(root / "site1-sc01-mask-r1.nii.gz", mask)
    bundle = gm.build_datasets(make_cfg(data_source="real", data_path=str(root), train_subjects="1",
                                        val_subjects="2-3", resample_mm=0, crop_size=40, augment=False))
    assert "mask values found: 0, 1, 2; target = gray matter (mask == 1)" in bundle.notes
    assert sum(m.sum() for m in bundle.train.masks) == (mask == 1).sum()


def test_majority_vote():
    votes = [np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 0]), np.array([1, 0, 0, 0, 0])]
    assert gm.majority(votes).tolist() == [1, 0, 0, 0, 0]            # 2 of 4 is a tie: background
    assert gm.majority(votes[:3]).tolist() == [1, 1, 1, 0, 0]
    bundle = gm.build_datasets(make_cfg(**{**TINY, "rater_mode": "majority"}))
    assert len(bundle.val) == 2 * 3 and all("-maj-" in n for n in bundle.val.names)


def test_train_filter_drops_all_zero_inputs(tmp_path):
    root = challenge_folder(tmp_path / "zero")
    image, _ = disc_volume(seed=101)
    image[:, :, 1] = 0
    save(root / "site1-sc01-image.nii.gz", image)
    bundle = gm.build_datasets(make_cfg(data_source="real", data_path=str(root), train_subjects="1-2",
                                        val_subjects="3", resample_mm=0, crop_size=40))
    assert len(bundle.train) == 2 * 4 * 2 - 2 and len(bundle.val) == 4 * 2
    assert "dropped 0 without gray matter and 2 with an all-zero input" in " ".join(bundle.notes)


def test_items_are_normalised_and_repeatable():
    bundle = gm.build_datasets(make_cfg(**TINY))
    item = bundle.val[0]["image"]
    assert abs(float(item.mean())) < 1e-4 and abs(float(item.std(unbiased=False)) - 1) < 1e-3
    bundle.train.set_epoch(3)
    a, b = bundle.train[5], bundle.train[5]
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert set(np.unique(a["mask"].numpy())) <= {0.0, 1.0}


# --------------------------------------------------------------------------- bad input

def real_cfg(root, **keys):
    split = {"train_subjects": "1-2", "val_subjects": "3"}
    return make_cfg(data_source="real", data_path=str(root), resample_mm=0, crop_size=40, **{**split, **keys})


def test_missing_image_for_a_mask(tmp_path):
    root = challenge_folder(tmp_path / "d")
    (root / "site1-sc02-image.nii.gz").unlink()
    with pytest.raises(DataError, match=r"site1-sc02-mask-r1.nii.gz: its image site1-sc02-image.nii.gz is missing"):
        gm.build_datasets(real_cfg(root))


def test_image_without_masks(tmp_path):
    root = challenge_folder(tmp_path / "d", subjects=range(1, 12))
    for r in (1, 2):
        (root / f"site1-sc11-mask-r{r}.nii.gz").unlink()
    gm.build_datasets(real_cfg(root, train_subjects="1-8", val_subjects="9-10"))   # 11 unused: fine
    with pytest.raises(DataError, match=r"site1-sc11-image.nii.gz: no mask files \(site1-sc11-mask-rR.nii.gz\)"):
        gm.build_datasets(real_cfg(root, train_subjects="1-8", val_subjects="9-11"))


def test_shape_mismatch(tmp_path):
    root = challenge_folder(tmp_path / "d")
    save(root / "site1-sc02-mask-r2.nii.gz", np.zeros((40, 38, 4), np.uint8))
    with pytest.raises(DataError, match=r"site1-sc02-mask-r2.nii.gz: shape 40x38x4 does not match its image "
                                        r"site1-sc02-image.nii.gz \(40x40x4\)"):
        gm.build_datasets(real_cfg(root))


def test_missing_rater_is_noted(tmp_path):
    root = challenge_folder(tmp_path / "d", raters=(1, 2, 3))
    complete = gm.build_datasets(real_cfg(root))
    assert not any("raters differ" in note for note in complete.notes)
    (root / "site1-sc02-mask-r2.nii.gz").unlink()
    for r in (1, 3):
        (root / f"site1-sc03-mask-r{r}.nii.gz").unlink()
    bundle = gm.build_datasets(real_cfg(root))
    assert ("raters differ between subjects (raters found: 1-3): site1-sc02 lacks rater 2 (no "
            "site1-sc02-mask-r2.nii.gz), site1-sc03 lacks raters 1,3 (no site1-sc03-mask-r1.nii.gz ...); those "
            "subjects give fewer (image, mask) pairs") in bundle.notes
    assert len(bundle.train) == len(complete.train) - 4 and len(bundle.val) == len(complete.val) // 3
    majority = gm.build_datasets(real_cfg(root, rater_mode="majority"))
    assert any(n.endswith("their majority vote is over fewer raters") for n in majority.notes)


@pytest.mark.parametrize("change,moved", [
    (lambda a: a @ np.array([[-1.0, 0, 0, 39], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), 19.5),   # x reversed
    (lambda a: a + np.array([[0, 0, 0, 0.0], [0, 0, 0, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]]), 0.5),   # a row off
    (lambda a: a @ np.diag([1.01, 1.0, 1.0, 1.0]), 0.195),          # 1 % larger pixels: 0.4 voxel at the far edge
], ids=["flipped", "shifted", "scaled"])
def test_mask_on_another_grid_refused(tmp_path, change, moved):
    root = challenge_folder(tmp_path / "d")
    _, mask = disc_volume(seed=102)
    affine = change(np.diag([0.5, 0.5, 5.0, 1.0]))
    save(root / "site1-sc02-mask-r2.nii.gz", mask, affine=affine)
    with pytest.raises(DataError, match=rf"site1-sc02-mask-r2.nii.gz: its header places the mask up to {moved:.3g} mm "
                                        r"away from its image site1-sc02-image.nii.gz"):
        gm.build_datasets(real_cfg(root))


def test_mask_affine_rounding_accepted(tmp_path):
    root = challenge_folder(tmp_path / "d")
    _, mask = disc_volume(seed=102)
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    affine[:3, 3] = 2e-5                                           # float32 header rounding, as written by another tool
    save(root / "site1-sc02-mask-r2.nii.gz", mask, affine=affine)
    assert len(gm.build_datasets(real_cfg(root)).train) == 2 * 4 * 2


def test_four_d_volume_refused_singleton_accepted(tmp_path):
    root = challenge_folder(tmp_path / "d")
    image, _ = disc_volume()
    save(root / "site1-sc01-image.nii.gz", image[..., None])      # (x, y, z, 1): fine
    gm.build_datasets(real_cfg(root))
    save(root / "site1-sc01-image.nii.gz", np.stack([image, image], axis=3))
    with pytest.raises(DataError, match=r"sc01-image.nii.gz: expected a 3-D volume .* got shape \(40, 40, 4, 2\)"):
        gm.build_datasets(real_cfg(root))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_or_truncated_file(tmp_path, damage):
    root = challenge_folder(tmp_path / "d")
    path = root / "site1-sc03-mask-r1.nii.gz"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(gzip.compress(b"not a nifti file" * 40))
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError, match=r"site1-sc03-mask-r1.nii.gz: unreadable NIfTI file \(.+\)") as err:
        gm.build_datasets(real_cfg(root))
    assert "\n" not in str(err.value)


def test_folder_without_challenge_files(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    save(tmp_path / "e" / "sub-01_T2star.nii.gz", np.zeros((4, 4, 2)))
    with pytest.raises(DataError, match=r"e: no GM challenge files \(expected siteN-scXX-image.nii.gz"):
        gm.build_datasets(real_cfg(tmp_path / "e"))
    with pytest.raises(DataError, match="no such folder"):
        gm.build_datasets(real_cfg(tmp_path / "absent"))


def test_split_problems(tmp_path):
    root = challenge_folder(tmp_path / "d")
    with pytest.raises(ConfigError, match="share subject"):
        gm.build_datasets(real_cfg(root, train_subjects="1-2", val_subjects="2-3"))
    with pytest.raises(DataError, match=r"no validation slices for subjects 9-10 of site\(s\) 1"):
        gm.build_datasets(real_cfg(root, train_subjects="1-3", val_subjects="9-10"))
    with pytest.raises(DataError, match=r"no files of site\(s\) 2 \(key 'sites'\); sites found: 1"):
        gm.build_datasets(real_cfg(root, sites="1-2"))


# --------------------------------------------------------------------------- the real sample

def test_build_sample(shared_data):
    bundle = gm.build_datasets(make_cfg(data_source="sample"))
    assert len(bundle.train) == 8 and len(bundle.val) == 3          # 11 slices, the last 3 validate
    assert bundle.train.images.shape[1:] == (200, 200) and np.allclose(bundle.val.spacings, 0.25)
    assert all(m.any() for m in bundle.val.masks)
    assert "NOT the paper's protocol: split by slice" in bundle.description
    assert "mask values found: 0, 1; target = gray matter (mask == 1)" in bundle.notes
    # the cord sits near the centre of the scan: the whole GM survives the 0.25 mm, 200 px crop
    full = np.asanyarray(nib.load(str(shared_data / "scgm_sct_t2s" / gm_nifti.SAMPLE_FILES[1])).dataobj)
    kept_mm2 = sum(m.sum() for m in bundle.val.masks) * 0.25 ** 2
    assert kept_mm2 == pytest.approx((full[:, :, 8:] == 1).sum() * 0.5 ** 2, rel=0.05)


def test_sample_missing(tmp_path):
    with pytest.raises(DataError, match="t2s_uncropped.nii.gz: missing"):
        gm.build_datasets(make_cfg(data_source="sample", data_path=str(tmp_path)))


def test_sample_bad_split_and_wrong_source(shared_data):
    with pytest.raises(ConfigError, match="'sample_val_slices': 11 does not fit the sample's 11 slices"):
        gm.build_datasets(make_cfg(data_source="sample", sample_val_slices=11))
    with pytest.raises(DataError, match="it holds the SCT sample: use data_source: sample"):
        gm.build_datasets(make_cfg(data_source="real", data_path=str(shared_data / "scgm_sct_t2s")))
