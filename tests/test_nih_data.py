"""Tests of the NIH pipeline modules of NIH_BASE: nih_scans.py (DICOM/NIfTI readers, orientation),
nih_labels.py (label checks), nih_patients.py (finding cases, split), nih_prepare.py (windowing, crops,
pipeline), nih_phantom.py and nih_data.py (sources, build_datasets). The real
Pancreas-CT sample is used when present and skipped otherwise."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unetq.paths import base_module
from nih_cases import SPACING, display_affine, edit_dicom, toy_volume, write_dicom_series, write_nifti
from unetq.config import ConfigError, validate
from unetq.data import DataError
from unetq.paths import PROJECT_ROOT

nih = base_module("NIH_BASE")
nih_scans = base_module("NIH_BASE", "nih_scans")
nih_labels = base_module("NIH_BASE", "nih_labels")
nih_patients = base_module("NIH_BASE", "nih_patients")
nih_prepare = base_module("NIH_BASE", "nih_prepare")
nih_phantom = base_module("NIH_BASE", "nih_phantom")


def make_cfg(**keys):
    """A real validated NIH config (the path training takes)."""
    return validate({"dataset": "nih", **keys}, extra_fields=nih.FIELDS, dataset="nih")


def nifti_case(tmp_path, number=1, **toy):
    """A NIfTI image + label pair on disk; returns (Case, hu, label)."""
    hu, label = toy_volume(seed=number, **toy)
    image = write_nifti(tmp_path / f"image{number:04d}.nii.gz", hu)
    lab = write_nifti(tmp_path / f"label{number:04d}.nii.gz", label)
    return nih_labels.Case(f"{number:04d}", number, image, lab), hu, label


# --------------------------------------------------------------------------- DICOM reader

def test_dicom_series_sorted_by_position_with_hu(tmp_path):
    hu, label = toy_volume()
    write_dicom_series(tmp_path / "s", hu, slope=0.5, intercept=-1050.0)
    (tmp_path / "s" / "README.txt").write_text("not DICOM")          # other files are ignored
    scan = nih_scans.read_dicom_series(tmp_path / "s")
    assert np.all(np.diff(scan.positions) > 0)                        # files were numbered in reverse
    assert [f.name for f in scan.files] == [f"IM{k:04d}.dcm" for k in range(6, 0, -1)]
    display, affine = nih_scans.to_display(scan)
    assert np.allclose(display, hu, atol=0.25)                        # stored * 0.5 - 1050 = HU
    assert np.allclose(nih_scans.voxel_sizes(affine), (SPACING[1], SPACING[0], SPACING[2]))


@pytest.mark.parametrize("change,message", [
    (lambda z: z[:2] + z[3:], "missing slice"),
    (lambda z: z[:3] + [z[2]] + z[4:], "duplicated slice"),
    (lambda z: z[:2] + [z[2] + 0.6] + z[3:], "irregular slice spacing"),
])
def test_dicom_series_gaps_and_duplicates_refused(tmp_path, change, message):
    hu, _ = toy_volume()
    zs = change([100.0 + 2.5 * k for k in range(6)])
    write_dicom_series(tmp_path / "s", hu[:len(zs)], positions=zs)
    with pytest.raises(nih_scans.CaseError, match=message):
        nih_scans.read_dicom_series(tmp_path / "s")


def test_dicom_mixed_series_and_modality_refused(tmp_path):
    hu, _ = toy_volume()
    write_dicom_series(tmp_path / "mixed", hu[:3])
    write_dicom_series(tmp_path / "mixed", hu[:2], uid="1.2.826.0.1.3680043.8.498.2", start=10)
    with pytest.raises(nih_scans.CaseError, match="mixed series: 2 SeriesInstanceUIDs"):
        nih_scans.read_dicom_series(tmp_path / "mixed")
    write_dicom_series(tmp_path / "mr", hu, modality="MR")
    with pytest.raises(nih_scans.CaseError, match="modality MR, not CT"):
        nih_scans.read_dicom_series(tmp_path / "mr")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(nih_scans.CaseError, match="no DICOM files"):
        nih_scans.read_dicom_series(tmp_path / "empty")


@pytest.mark.parametrize("attribute,value,message", [
    ("PixelSpacing", [0.75], r"PixelSpacing has 1 value \(0.75\); expected 2 finite numbers"),
    ("PixelSpacing", [0.0, 0.75], "both spacings must be positive"),
    ("ImagePositionPatient", [-20.0, -30.0], r"ImagePositionPatient has 2 values \(-20\\-30\); expected 3"),
    ("ImageOrientationPatient", [1, 0, 0, 0, 1], "ImageOrientationPatient has 5 values"),
    ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "degenerate ImageOrientationPatient .* product a norm of 0.000"),
    ("ImageOrientationPatient", [2, 0, 0, 0, 1, 0], "degenerate ImageOrientationPatient .* lengths 2.000 and 1.000"),
], ids=["spacing-one-value", "spacing-zero", "position-two-values", "orientation-five-values", "orientation-parallel",
        "orientation-not-unit"])
def test_malformed_dicom_header_refused_naming_the_file(tmp_path, attribute, value, message):
    hu, _ = toy_volume()
    folder = write_dicom_series(tmp_path / "PANCREAS_0003" / "series", hu)
    bad = edit_dicom(folder / "IM0004.dcm", **{attribute: value})        # one file of six is enough
    with pytest.raises(nih_scans.CaseError, match=message) as err:
        nih_scans.read_dicom_series(folder)
    assert str(err.value).startswith(f"{bad}: ") and "duplicated" not in str(err.value)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)                 # import pydicom -> ImportError
    with pytest.raises(DataError, match="pip install pydicom") as err:
        nih_scans.read_dicom_series(tmp_path)
    assert not isinstance(err.value, nih_scans.CaseError)                   # stops the batch: every case needs it


def test_real_dicom_sample_order_and_hu(shared_data):
    pydicom = pytest.importorskip("pydicom")
    folder = shared_data / "pancreas_ct_totalseg" / "dicom"
    scan = nih_scans.read_dicom_series(folder)
    assert scan.array.shape == (512, 512, 20) and scan.array.dtype == np.float32
    # independent check of the order: z of ImagePositionPatient read here, sorted ascending
    z = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in folder.iterdir()}
    assert scan.files == sorted(z, key=z.get)
    assert np.allclose(np.diff(scan.positions), 2.0)
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in scan.files]
    assert numbers == sorted(numbers, reverse=True)                   # InstanceNumber would have reversed it
    hu, _ = nih_scans.to_display(scan)
    assert -1030 <= hu.min() <= -1000                                 # padding / air
    assert np.median(hu[:, :40, :40]) < -900                          # the corner is air
    body = hu[:, 200:320, 180:330]                                    # abdomen: soft tissue and fat
    assert -150 < np.median(body) < 150
    assert hu.max() > 700                                             # bone / contrast


# --------------------------------------------------------------------------- NIfTI, orientation, alignment

def test_load_case_nifti_in_other_storage_orders(tmp_path):
    hu, label = toy_volume(shape=(40, 56))
    case = nih_labels.Case("0001", 1, write_nifti(tmp_path / "image0001.nii", hu),
                    write_nifti(tmp_path / "label0001.nii.gz", label))
    volume = nih_labels.load_case(case)
    assert np.array_equal(volume.hu, hu) and np.array_equal(volume.label, label)
    assert volume.spacing == pytest.approx(SPACING)
    # the same label stored RAS (x and y flipped) and axis-swapped, each with a header that says so
    xyz = label.transpose(2, 1, 0)
    flipped_affine = display_affine() @ np.array([[-1, 0, 0, xyz.shape[0] - 1], [0, -1, 0, xyz.shape[1] - 1],
                                                  [0, 0, 1, 0], [0, 0, 0, 1]])
    swapped_affine = display_affine()[:, [1, 0, 2, 3]]
    import nibabel as nib
    for data, affine in ((xyz[::-1, ::-1], flipped_affine), (xyz.transpose(1, 0, 2), swapped_affine)):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(tmp_path / "label0001.nii.gz"))
        assert np.array_equal(nih_labels.load_case(case).label, label)


@pytest.mark.parametrize("how,message", [
    ("transposed", "look transposed"),
    ("flipped", "flipped along slices"),
    ("shifted", "shifted by"),
    ("voxel", "voxel size"),
])
def test_misaligned_label_refused(tmp_path, how, message):
    hu, label = toy_volume(shape=(40, 56))
    image = write_nifti(tmp_path / "image0001.nii.gz", hu)
    affine = display_affine()
    if how == "transposed":            # array axes swapped, header not updated
        label = label.transpose(0, 2, 1)
    elif how == "flipped":             # header says z runs the other way from the image's first slice
        affine = affine @ np.diag([1, 1, -1, 1])
    elif how == "shifted":
        affine[:3, 3] += (0, 0, 7.5)
    else:
        affine = affine @ np.diag([1.2, 1.2, 1, 1])
    lab = write_nifti(tmp_path / "label0001.nii.gz", label, affine)
    with pytest.raises(nih_scans.CaseError, match=message) as err:
        nih_labels.load_case(nih_labels.Case("0001", 1, image, lab))
    assert "label0001.nii.gz" in str(err.value)


def test_label_in_air_and_empty_label_refused(tmp_path):
    case, hu, label = nifti_case(tmp_path)
    volume = nih_labels.load_case(case)
    volume.hu[volume.label == 1] = -1000.0                            # the 'pancreas' lies in air
    with pytest.raises(nih_scans.CaseError, match="looks misaligned"):
        nih_labels.pancreas_mask(volume, 1)
    with pytest.raises(nih_scans.CaseError,
                       match=r"empty label: no voxel has the pancreas value 7 \(values present: 0, 1\)"):
        nih_labels.pancreas_mask(nih_labels.load_case(case), 7)


@pytest.mark.parametrize("how,looks", [
    ("lr", "flipped left-right"), ("ap", "flipped anterior-posterior"), ("transpose", "transposed"),
])
def test_label_flipped_in_its_data_refused(tmp_path, how, looks):
    # square slices, a pancreas in fat, off-centre: every variant of the label lands in fat
    hu, label = toy_volume(shape=(56, 56), centre=(16, 36), body_hu=-100.0)
    wrong = {"lr": label[:, :, ::-1], "ap": label[:, ::-1], "transpose": label.transpose(0, 2, 1)}[how]
    image = write_nifti(tmp_path / "image0001.nii.gz", hu)
    lab = write_nifti(tmp_path / "label0001.nii.gz", wrong)               # the image's header: check_alignment passes
    volume = nih_labels.load_case(nih_labels.Case("0001", 1, image, lab))
    with pytest.raises(nih_scans.CaseError, match=f"label's data look {looks}") as err:
        nih_labels.pancreas_mask(volume, 1)
    assert str(err.value).startswith(f"{lab}: ") and "better on 4 of 4 slices" in str(err.value)
    write_nifti(lab, label)                                               # the right label on the same image
    volume = nih_labels.load_case(nih_labels.Case("0001", 1, image, lab))
    assert nih_labels.pancreas_mask(volume, 1).sum() == label.sum()


def test_label_content_not_judged_without_contrast_or_voxels():
    hu, label = toy_volume(shape=(56, 56), centre=(16, 36))               # soft tissue all round: no edge to see
    volume = nih_labels.Volume("0001", hu, label[:, :, ::-1].copy(), SPACING, "img", "lab")
    assert nih_labels.pancreas_mask(volume, 1).any()                             # cannot tell: accepted
    hu, label = toy_volume(shape=(56, 56), centre=(16, 36), radius=2, body_hu=-100.0, pancreas_slices=[2])
    volume = nih_labels.Volume("0001", hu, label[:, :, ::-1].copy(), SPACING, "img", "lab")
    assert label.sum() < nih_labels.CONTENT_MIN_VOXELS                 # too small to judge
    assert nih_labels.pancreas_mask(volume, 1).any()


def test_phantom_label_flipped_in_its_data_refused():
    volume = nih_phantom.make_phantom_volume(1, seed=0)
    assert nih_labels.pancreas_mask(volume, 1).any()
    for flip, looks in ((lambda a: a[:, :, ::-1], "flipped left-right"), (lambda a: a[:, ::-1], "flipped anterior"),
                        (lambda a: a.transpose(0, 2, 1), "transposed")):
        wrong = nih_labels.Volume("0001", volume.hu, np.ascontiguousarray(flip(volume.label)), volume.spacing,
                                  "img", "lab")
        with pytest.raises(nih_scans.CaseError, match=f"look {looks}"):
            nih_labels.pancreas_mask(wrong, 1)


def test_not_hounsfield_refused(tmp_path):
    hu, label = toy_volume()
    image = write_nifti(tmp_path / "image0001.nii.gz", hu + 1024.0)    # raw stored values, no intercept
    lab = write_nifti(tmp_path / "label0001.nii.gz", label)
    with pytest.raises(nih_scans.CaseError, match="not air in Hounsfield units"):
        nih_labels.load_case(nih_labels.Case("0001", 1, image, lab))


def test_real_sample_orientation_and_pancreas(shared_data):
    root = shared_data / "pancreas_ct_totalseg"
    volume = nih_labels.load_case(nih_labels.Case("s", None, root / "example_ct_sm.nii.gz",
                                                  root / "example_seg.nii.gz"))
    assert volume.hu.shape == (30, 101, 122) and volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    mask = nih_labels.pancreas_mask(volume, 7)
    assert mask.sum() == 644
    assert -100 < np.median(volume.hu[mask]) < 150                  # soft tissue
    columns = {value: np.argwhere(volume.label == value)[:, 2].mean() for value in (1, 5)}
    assert columns[5] < 61 < columns[1]            # liver (5) on the image's left, spleen (1) on its right
    bone_row = np.argwhere(volume.hu > 400)[:, 1].mean()
    assert bone_row > np.argwhere(mask)[:, 1].mean()                  # spine posterior to (below) the pancreas


def test_real_sample_label_flipped_in_its_data_refused(shared_data):
    root = shared_data / "pancreas_ct_totalseg"
    volume = nih_labels.load_case(nih_labels.Case("s", None, root / "example_ct_sm.nii.gz",
                                                  root / "example_seg.nii.gz"))
    tissue = np.stack([nih_labels.soft_tissue(volume.hu[z]) for z in range(2, 20)])
    given = nih_labels.label_fit(tissue, volume.label[2:20] == 7, 1)
    assert given[0] > 0.9 and given[1] > 0.35                         # 94 % soft tissue, contrast +0.40 (3 mm ring)
    for axis, looks in ((2, "flipped left-right"), (1, "flipped anterior-posterior")):
        wrong = nih_labels.Volume("s", volume.hu, np.flip(volume.label, axis), volume.spacing, "img", "lab")
        with pytest.raises(nih_scans.CaseError, match=f"look {looks} .* better on 18 of 18 slices"):
            nih_labels.pancreas_mask(wrong, 7)


# --------------------------------------------------------------------------- geometry, intensity, split

def test_crop_origin_centres_clamps_and_pads():
    assert nih_prepare.crop_origin((50.5, 80.5), (16, 24), (112, 176)) == (43, 69)      # box centre 43 + 7.5 = 50.5
    top, left = nih_prepare.crop_origin((50.0, 80.0), (16, 24), (112, 176))             # an even box: half a pixel off
    assert abs(top + 7.5 - 50.0) == 0.5 and abs(left + 11.5 - 80.0) == 0.5
    assert nih_prepare.crop_origin((2.0, 170.0), (16, 24), (112, 176)) == (0, 152)      # pushed inside
    assert nih_prepare.crop_origin((5.0, 5.0), (16, 24), (10, 40)) == (-3, 0)           # smaller slice: padded
    array = np.arange(12.0).reshape(3, 4)
    out = nih_prepare.extract(array, -1, 2, (4, 4), fill=-1.0)
    assert np.array_equal(out[1:, :2], array[:, 2:]) and (out[0] == -1).all() and (out[:, 2:] == -1).all()


def test_body_box_ignores_the_table():
    hu = np.full((60, 80), -1000.0)
    hu[10:40, 15:70] = 40.0            # body
    hu[50:53, 5:75] = 200.0            # table: brighter but smaller and separate
    assert nih_prepare.body_box(hu) == (10, 15, 40, 70)
    assert nih_prepare.body_box(np.full((5, 6), -1000.0)) == (0, 0, 5, 6)


def test_body_prior_matches_a_direct_computation():
    prior = nih_prepare.BodyPrior()
    samples = [((30.0, 50.0), (10, 20, 61, 101)), ((40.0, 60.0), (20, 10, 81, 131))]
    for centre, body in samples:
        prior.add(centre, body)
    expected = np.mean([[(c[0] - b[0]) / (b[2] - 1 - b[0]), (c[1] - b[1]) / (b[3] - 1 - b[1])] for c, b in samples], 0)
    assert prior.relative == pytest.approx(tuple(expected))
    assert prior.centre((0, 0, 101, 201)) == pytest.approx((expected[0] * 100, expected[1] * 200))


def test_window_and_legacy_intensity():
    hu = np.array([[-1000.0, -100.0, 70.0], [240.0, 500.0, 0.0]])
    assert np.allclose(nih_prepare.intensity(hu, nih_prepare.Options()), [[0, 0, 0.5], [1, 1, 100 / 340]])
    assert np.allclose(nih_prepare.intensity(hu, nih_prepare.Options(hu_window=(0, 100))), [[0, 0, 0.7], [1, 1, 0]])
    legacy = nih_prepare.intensity(np.array([[-50.0, 50.0], [100.0, 400.0]]),
                                   nih_prepare.Options(intensity="legacy_clip"))
    assert np.allclose(legacy, [[0, 50 / 255], [100 / 255, 1]])         # clip to 0..255, then min-max
    assert np.allclose(nih_prepare.legacy_intensity(np.array([[10.0, 20.0]])), [[0.0, 1.0]])   # stretched per slice


def test_split_patients_last_fraction_by_number():
    cases = [nih_labels.Case(f"{n:04d}", n) for n in np.random.default_rng(0).permutation(np.arange(1, 83))
             if n not in (25, 70)]
    train, val = nih_patients.split_patients(cases, 0.1)
    assert [c.number for c in val] == [75, 76, 77, 78, 79, 80, 81, 82]
    assert len(train) == 72 and max(c.number for c in train) == 74
    assert nih_patients.split_patients(cases[::-1], 0.1)[1] == val                 # independent of input order
    two = [nih_labels.Case("0002", 2), nih_labels.Case("0001", 1)]
    assert [c.number for c in nih_patients.split_patients(two, 0.1)[1]] == [2]
    with pytest.raises(DataError, match="at least 2 usable patients"):
        nih_patients.split_patients(two[:1], 0.1)


# --------------------------------------------------------------------------- the pipeline

def _volume(patient, centre, body_shift=0, label_centre=None, shape=(6, 48, 64)):
    """A toy Volume whose body is shifted by body_shift columns and whose pancreas sits at centre
    (the image) / label_centre (the label, when different: a wrong label on a fixed image)."""
    hu, label = toy_volume(shape[0], shape[1:], centre=centre)
    hu, label = np.roll(hu, body_shift, axis=2), np.roll(label, body_shift, axis=2)
    if label_centre is not None:
        _, label = toy_volume(shape[0], shape[1:], centre=label_centre)
    return nih_labels.Volume(patient, hu, label, (0.75, 0.75, 2.5), "img", "lab")


def test_training_crop_centred_on_its_pancreas():
    opts = nih_prepare.Options(crop=(16, 24))
    prior = nih_prepare.BodyPrior()
    slices = nih_prepare.process_volume(_volume("0001", (20, 30)), "train", opts, prior)
    assert [s.row["slice"] for s in slices] == [1, 2, 3, 4]           # pancreas slices only
    for s in slices:
        box = nih_prepare.box_of(s.mask)
        assert nih_prepare.box_centre(box) == pytest.approx((7.5, 11.5), abs=0.5)
        assert s.row["pancreas_kept"] == 1.0 and s.row["centred_on"] == "gt"
        assert s.image.shape == (16, 24) and 0 <= s.image.min() and s.image.max() <= 1
        assert (s.row["crop_bottom"] - s.row["crop_top"], s.row["crop_right"] - s.row["crop_left"]) == (16, 24)
    assert prior.count == 4


def test_validation_crop_does_not_look_at_the_label():
    opts = nih_prepare.Options(crop=(16, 24))
    prior = nih_prepare.BodyPrior()
    trained = nih_prepare.process_volume(_volume("0001", (20, 30)), "train", opts, prior)
    right = nih_prepare.process_volume(_volume("0002", (20, 30), body_shift=3), "val", opts, prior)
    wrong = nih_prepare.process_volume(_volume("0002", (20, 30), body_shift=3, label_centre=(30, 20)), "val", opts,
                                       prior)
    boxes = [(s.row["crop_top"], s.row["crop_left"]) for s in right]
    assert boxes == [(s.row["crop_top"], s.row["crop_left"]) for s in wrong]          # label moved, box did not
    assert all(np.array_equal(a.image, b.image) for a, b in zip(right, wrong))
    # the same anatomy 3 columns further right: the label-free box is the training (label-centred) box + 3
    assert boxes[0] == (trained[0].row["crop_top"], trained[0].row["crop_left"] + 3)
    assert right[0].row["centred_on"] == "body" and right[0].row["pancreas_kept"] == 1.0
    legacy = nih_prepare.Options(crop=(16, 24), val_crop="legacy_gt")
    moved = nih_prepare.process_volume(_volume("0002", (20, 30), body_shift=3, label_centre=(30, 20)), "val", legacy,
                                       prior)
    assert (moved[0].row["crop_top"], moved[0].row["crop_left"]) != boxes[0]           # legacy follows the label


def test_prepare_skips_bad_cases_and_goes_on():
    good = [nih_labels.Case(f"{n:04d}", n, load=lambda c: _volume(c.patient, (20, 30))) for n in (1, 2, 4)]

    def broken(case):
        raise nih_scans.CaseError(f"PANCREAS_{case.number:04d}: missing slice(s)")

    cases = good[:2] + [nih_labels.Case("0003", 3, load=broken)] + good[2:]
    train, val = nih_patients.split_patients(cases, 0.25)
    problem = nih_labels.Case("0009", 9, problem="label0009.nii.gz: a label without an image")
    sink = nih_prepare.Collector()
    report = nih_prepare.prepare(train, val, nih_prepare.Options(crop=(16, 24)), sink, [problem])
    assert report.patients == {"train": ["0001", "0002"], "val": ["0004"]}
    assert [case for case, _ in report.skipped] == ["patient 0009", "patient 0003"]
    assert "missing slice" in report.skipped[1][1]
    assert report.slices == {"train": 8, "val": 4} and len(sink.items["train"]) == 8
    images, masks, names, spacings = sink.arrays("val")
    assert images.shape == (4, 16, 24) and names[0] == "0004_0001" and np.allclose(spacings, 0.75)
    with pytest.raises(DataError, match="no validation slice"):
        nih_prepare.prepare(train, [nih_labels.Case("0003", 3, load=broken)], nih_prepare.Options(crop=(16, 24)),
                            nih_prepare.Collector())


def test_prepare_records_unexpected_errors_but_stops_on_run_wide_ones():
    def buggy(case):
        raise ZeroDivisionError("float division by zero\n  in a reader")

    def no_reader(case):
        raise DataError("reading DICOM needs the optional package pydicom: pip install pydicom")

    good = [nih_labels.Case(f"{n:04d}", n, load=lambda c: _volume(c.patient, (20, 30))) for n in (1, 2, 4)]
    odd = nih_labels.Case("0003", 3, image=Path("PANCREAS_0003"), label=Path("label0003.nii.gz"), load=buggy)
    report = nih_prepare.prepare(good[:1] + [odd] + good[1:2], good[2:], nih_prepare.Options(crop=(16, 24)),
                                 nih_prepare.Collector())
    assert report.patients == {"train": ["0001", "0002"], "val": ["0004"]}
    assert report.skipped == [("patient 0003", "PANCREAS_0003 + label0003.nii.gz: unexpected error while reading "
                                               "or processing (ZeroDivisionError: float division by zero in a reader)")]
    with pytest.raises(DataError, match="needs the optional package pydicom"):      # every case would fail
        nih_prepare.prepare(good[:1] + [nih_labels.Case("0003", 3, load=no_reader)], good[2:],
                            nih_prepare.Options(crop=(16, 24)), nih_prepare.Collector())


def test_resampling_changes_pixel_size():
    native = nih_prepare.process_volume(_volume("0001", (20, 30)), "train", nih_prepare.Options(crop=(16, 24)),
                                        nih_prepare.BodyPrior())
    opts = nih_prepare.Options(crop=(16, 24), spacing_mm=1.5)
    slices = nih_prepare.process_volume(_volume("0001", (20, 30)), "train", opts, nih_prepare.BodyPrior())
    assert slices[0].row["spacing_row_mm"] == 1.5 and native[0].row["spacing_row_mm"] == 0.75
    ratio = slices[0].row["pancreas_pixels"] / native[0].row["pancreas_pixels"]
    assert 0.15 < ratio < 0.35                                        # pixels twice as wide: about a quarter


def test_find_cases_pairs_by_number(tmp_path):
    hu, label = toy_volume()
    series = tmp_path / "Pancreas-CT" / "PANCREAS_0001" / "study" / "series"    # found by name: nothing read yet
    series.mkdir(parents=True)
    (series / "IM0001.dcm").write_bytes(b"\0" * 132)
    write_nifti(tmp_path / "Pancreas-CT" / "image0002.nii.gz", hu)
    write_nifti(tmp_path / "Pancreas-CT" / "PANCREAS_0004.nii.gz", hu)
    labels = tmp_path / "labels"
    labels.mkdir()
    for n in (1, 2, 3, 25):
        write_nifti(labels / f"label{n:04d}.nii.gz", label)
    write_nifti(tmp_path / "Pancreas-CT" / "image0025.nii.gz", hu)
    cases, problems, excluded = nih_patients.find_cases(tmp_path / "Pancreas-CT", labels, exclude={25})
    assert [(c.number, c.image.name, c.label.name) for c in cases] == [
        (1, "PANCREAS_0001", "label0001.nii.gz"), (2, "image0002.nii.gz", "label0002.nii.gz")]
    assert excluded == [25]
    assert [(c.number, "without an image" in c.problem or "without a label" in c.problem) for c in problems] == [
        (3, True), (4, True)]
    assert "a label without an image" in problems[0].problem and "an image without a label" in problems[1].problem
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Pancreas-CT cases found"):
        nih_patients.find_cases(tmp_path / "empty")
    with pytest.raises(DataError, match="nothing_here: no such folder"):
        nih_patients.find_cases(tmp_path / "Pancreas-CT", tmp_path / "nothing_here")
    assert nih_patients.parse_exclude("25, 70") == {25, 70} and nih_patients.parse_exclude("none") == set()


# --------------------------------------------------------------------------- phantom

def test_phantom_deterministic_hu_and_label():
    a, b, c = (nih_phantom.make_phantom_volume(3, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.hu[:1], c.hu[:1])
    assert a.hu.shape[1:] == (512, 512) and a.hu.dtype == np.float32
    mask = a.label == 1
    assert not mask[0].any() and not mask[-1].any() and mask[1:-1].any(axis=(1, 2)).all()   # 1 empty slice each end
    assert np.median(a.hu[:, :20, :20]) < -950                        # air
    assert 25 < np.median(a.hu[mask]) < 65                             # the pancreas' 30-60 HU (+ noise, clefts)
    assert (a.hu[mask] > nih_labels.BODY_HU).mean() > 0.99
    seven = nih_phantom.make_phantom_volume(3, seed=1, label_value=7)
    assert set(np.unique(seven.label)) == {0, 7} and np.array_equal(seven.label == 7, mask)


def test_fields_defaults_and_bad_values():
    cfg = make_cfg()
    assert (cfg.hu_min, cfg.hu_max, cfg.crop_height, cfg.crop_width, cfg.val_crop, cfg.label_value) == (
        -100.0, 240.0, 112, 176, "body", None)
    with pytest.raises(ConfigError, match="hu_min < hu_max"):
        nih.options(make_cfg(hu_min=300))
    with pytest.raises(ConfigError, match="'crop_width': 100 is not allowed; allowed: a multiple of 8, at least 8"):
        nih.options(make_cfg(crop_width=100))
    # one rule, one wording, for the config keys and the pipeline's options (pre-processing's --crop)
    with pytest.raises(DataError, match="^crop width: 100 is not allowed; allowed: a multiple of 8, at least 8"):
        nih_prepare.Options(crop=(112, 100)).check()
    with pytest.raises(DataError, match="^crop height: 0 is not allowed"):
        nih_prepare.Options(crop=(0, 176)).check()
    with pytest.raises(ConfigError, match="'val_crop'"):
        make_cfg(val_crop="gt")
    assert nih.options(make_cfg(data_source="sample")).label_value == 7
    assert nih.options(make_cfg(data_source="sample", label_value=3)).label_value == 3
    assert nih.options(make_cfg()).spacing_mm is None


def test_build_phantom():
    bundle = nih.build_datasets(make_cfg(phantom_patients=3, val_fraction=0.3, crop_height=64, crop_width=96))
    assert bundle.source == "phantom" and "split by patient: train 0001-0002 / val 0003" in bundle.description
    assert bundle.train.images.shape[1:] == (64, 96) and len(bundle.val) >= 8
    assert {n.split("_")[0] for n in bundle.val.names} == {"0003"}
    assert np.allclose(bundle.train.spacings, 0.8)
    assert any("body prior" in note for note in bundle.notes)


def test_build_sample(shared_data):
    bundle = nih.build_datasets(make_cfg(data_source="sample"))
    assert bundle.val.names == [f"sample_{z:04d}" for z in range(15, 20)]
    assert [int(n.split("_")[1]) for n in bundle.train.names] == list(range(2, 15))
    assert bundle.train.images.shape[1:] == (112, 176) and np.allclose(bundle.val.spacings, 1.0)
    assert "ONE patient" in bundle.description and "split by slice block" in bundle.description
    assert bundle.train.masks.any(axis=(1, 2)).all()


def test_build_sample_missing(tmp_path):
    with pytest.raises(DataError, match="sample .* is missing"):
        nih.build_datasets(make_cfg(data_source="sample", data_path=str(tmp_path)))


def test_build_real_raw_folder(tmp_path):
    for n in (1, 2, 3):
        nifti_case(tmp_path, n, slices=4)
    write_nifti(tmp_path / "label0005.nii.gz", toy_volume()[1])        # a label without an image
    bundle = nih.build_datasets(make_cfg(data_source="real", data_path=str(tmp_path), crop_height=16, crop_width=24,
                                         val_fraction=0.3))
    assert {n[:4] for n in bundle.val.names} == {"0003"} and len(bundle.train) == 4
    assert any("skipped: patient 0005" in note for note in bundle.notes)


def test_dicom_tests_skip_when_reader_absent():
    """pydicom is optional: with it unimportable, the tests that need it skip and none fails."""
    code = ("import sys; sys.modules['pydicom'] = None; import pytest; sys.exit(pytest.main(["
            "'-q', '-p', 'no:cacheprovider', '-k', 'dicom and not reader_absent', 'tests/test_nih_data.py']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "failed" not in summary and "error" not in summary
    assert "1 passed" in summary                                          # the install hint needs no pydicom
