"""Helpers for the NIH tests (no tests here): small synthetic Pancreas-CT cases, toy HU volumes
with a pancreas blob written as NIfTI or as DICOM series (pydicom), in display orientation
[Z, H, W] (rows anterior -> posterior, columns patient right -> left, slices inferior -> superior)."""

import numpy as np
import pytest

SPACING = (0.75, 0.75, 2.5)   # row, col, slice (mm)
ORIGIN = (-20.0, -30.0, 100.0)  # LPS position of the first voxel (x, y, z)


def toy_volume(slices=6, shape=(48, 64), centre=(20, 30), radius=5, label_value=1, seed=0, pancreas_slices=None,
               body_hu=40.0):
    """(hu float32 [Z,H,W], label uint8 [Z,H,W]): air -1000, a body ellipse of soft tissue (``body_hu``
    40 HU + noise; -100 makes it fat, so that the pancreas' edge shows), a round 'pancreas' (55 HU) of
    ``radius`` at ``centre`` on the slices ``pancreas_slices`` (default: all but the first and last)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    hu = np.where(body, body_hu, -1000.0)[None].repeat(slices, 0).astype(np.float32)
    hu += np.round(rng.normal(0, 5, hu.shape)).astype(np.float32)   # whole HU: DICOM stores them exactly
    label = np.zeros(hu.shape, np.uint8)
    blob = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    for z in (range(1, slices - 1) if pancreas_slices is None else pancreas_slices):
        label[z][blob] = label_value
        hu[z][blob] = 55.0
    return hu, label


def display_affine(spacing=SPACING, origin=ORIGIN):
    """RAS+ affine of a display array stored as NIfTI [x, y, z] = [col, row, slice] (LPS axes)."""
    affine = np.diag([-spacing[1], -spacing[0], spacing[2], 1.0])
    affine[:3, 3] = (-origin[0], -origin[1], origin[2])
    return affine


def write_nifti(path, zhw, affine=None, dtype=None):
    """Write a display-orientation array [Z,H,W] as NIfTI (stored [x,y,z] with an LPS header)."""
    import nibabel as nib

    data = np.asarray(zhw).transpose(2, 1, 0)
    if dtype is not None:
        data = data.astype(dtype)
    nib.save(nib.Nifti1Image(data, display_affine() if affine is None else affine), str(path))
    return path


def write_dicom_series(folder, hu, spacing=SPACING, origin=ORIGIN, uid="1.2.826.0.1.3680043.8.498.1",
                       modality="CT", slope=1.0, intercept=-1024.0, positions=None, start=0):
    """One DICOM file per slice of ``hu`` [Z,H,W] (axial, IOP 1,0,0,0,1,0). Files are named and
    numbered in REVERSE slice order, so only the positions give the right order. ``positions``
    overrides the z of each slice (to make gaps or duplicates). Skips the calling test when the
    optional pydicom is not installed."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    n = len(hu)
    zs = [origin[2] + k * spacing[2] for k in range(n)] if positions is None else positions
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = modality, uid, start + n - k
        ds.ImagePositionPatient = [origin[0], origin[1], zs[k]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.round((hu[k] - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        pydicom.dcmwrite(folder / f"IM{start + n - k:04d}.dcm", ds, enforce_file_format=True)
    return folder


def edit_dicom(path, **attributes):
    """Rewrite header attributes of one DICOM file (``PixelSpacing=[0.75]``: a malformed header)."""
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(path)
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.save_as(path)
    return path
