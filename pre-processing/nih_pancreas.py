"""Prepare NIH Pancreas-CT (TCIA) as 2-D ROI slices in the layout NIH_BASE reads.

Usage:
    python pre-processing/nih_pancreas.py SRC OUT [--labels DIR] [--label-value 1]
        [--hu-window -100 240 | --legacy-intensity] [--crop 112 176] [--spacing-mm MM]
        [--val-fraction 0.1] [--val-crop body|legacy_gt] [--exclude 25,70]

SRC holds the images, any depth below it: DICOM series folders PANCREAS_NNNN/ (read with pydicom,
an optional dependency: pip install pydicom) or NIfTI files PANCREAS_NNNN.nii.gz / imageNNNN.nii.gz,
in Hounsfield units. The labels labelNNNN.nii.gz lie below --labels (default SRC); images and labels
are paired by the number NNNN. Cases 25 and 70 are left out by default (--exclude none keeps them).

Per patient: slices sorted by position, HU from RescaleSlope/Intercept, image and label brought to
one orientation by their headers and checked to align (a transposed, flipped or shifted label is
refused); axial slices containing pancreas are kept, windowed (default -100..240 HU -> [0, 1]) and
cropped to 112 x 176: training slices centred on their pancreas, validation slices on a label-free
centre (the mean training pancreas position relative to the body) unless --val-crop legacy_gt. The
LAST --val-fraction of the patients by number validate (80 patients: the last 8).

A bad case (label without image, broken DICOM series or malformed geometry header, non-CT, misaligned,
flipped-in-its-data or empty label, or any unexpected error of that one patient) is skipped with a
message; the others are processed and the summary lists what was skipped. The real one-patient sample
goes through as two links under NIH names: see pre-processing/README.md. OUT (new or empty)
receives data/ + mask/ (training), val_img/ + val_mask/ (validation): PATIENT_SLICE.png, images
16-bit (value / 65535 = the [0, 1] intensity), masks 0/255; manifest.csv (one row per slice: patient,
slice, split, crop box, pancreas kept, spacing, sources) and preprocessing.json (options, body prior,
patients, skipped cases). Nothing is written unless at least one training and one validation slice
come out. Point an NIH config at OUT with data_source: real, data_path: OUT.
Errors are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from unetq.data import DataError, require_empty_folder
from unetq.paths import base_module


def load_pipeline() -> tuple:
    """The NIH_BASE modules training runs on raw data (unetq.paths.base_module): nih_patients.py (find
    and split), nih_prepare.py (read, check, window, crop) and nih_layout.py (the folder written), so
    that this script prepares exactly what training computes."""
    return tuple(base_module("NIH_BASE", name) for name in ("nih_patients", "nih_prepare", "nih_layout"))


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="NIH Pancreas-CT -> 112x176 ROI slices in data/ mask/ "
                                                 "val_img/ val_mask/ (the layout NIH_BASE reads).")
    parser.add_argument("src", type=Path, help="images: PANCREAS_NNNN/ DICOM folders or NIfTI files")
    parser.add_argument("out", type=Path, help="output folder (must be new or empty)")
    parser.add_argument("--labels", type=Path, default=None, help="folder holding labelNNNN.nii.gz (default SRC)")
    parser.add_argument("--label-value", type=int, default=1, help="pancreas value in the labels (default 1)")
    parser.add_argument("--hu-window", type=float, nargs=2, default=(-100.0, 240.0), metavar=("LOW", "HIGH"),
                        help="HU window mapped to [0, 1] (default -100 240)")
    parser.add_argument("--legacy-intensity", action="store_true",
                        help="the original's intensities: HU clipped to 0..255, min-max per slice")
    parser.add_argument("--crop", type=int, nargs=2, default=(112, 176), metavar=("H", "W"),
                        help="ROI size, multiples of 8 (default the paper's 112 176)")
    parser.add_argument("--spacing-mm", type=float, default=None,
                        help="resample slices in-plane to this pixel size first (default: native)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="the last fraction of patients by number validate (default 0.1)")
    parser.add_argument("--val-crop", choices=("body", "legacy_gt"), default="body",
                        help="validation ROI centre: body (label-free, default) or legacy_gt (on its label)")
    parser.add_argument("--exclude", default="25,70", help="patient numbers to leave out (default 25,70; none)")
    return parser.parse_args(argv)


def prepare_folder(args) -> object:
    """Find, split and process every case into a temporary folder beside OUT, then move it into
    place; on failure the temporary folder is removed (nothing written). Returns the Report."""
    from tqdm import tqdm

    patients, pipeline, layout = load_pipeline()
    opts = pipeline.Options(label_value=args.label_value, hu_window=tuple(args.hu_window),
                       intensity="legacy_clip" if args.legacy_intensity else "window", crop=tuple(args.crop),
                       spacing_mm=args.spacing_mm, val_crop=args.val_crop)
    opts.check()
    cases, problems, excluded = patients.find_cases(args.src, args.labels, patients.parse_exclude(args.exclude))
    train, val = patients.split_patients(cases, args.val_fraction)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.partial-", dir=args.out.parent))
    try:
        sink = layout.FolderSink(temp)
        with tqdm(total=len(train) + len(val), desc="patients", unit="patient", file=sys.stderr,
                  disable=None) as bar:
            report = pipeline.prepare(train, val, opts, sink, problems, progress=lambda _: bar.update())
        sink.finish(opts, report, {"source": str(args.src), "labels": str(args.labels or args.src),
                                   "excluded": excluded, "val_fraction": args.val_fraction})
        if args.out.is_dir():
            args.out.rmdir()                 # checked empty above
        os.replace(temp, args.out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return report


def main(argv=None) -> int:
    """Entry point: returns the exit status (0, or 2 with a one-line message on bad input)."""
    args = parse_args(argv)
    try:
        require_empty_folder(args.out)
        report = prepare_folder(args)
    except (DataError, OSError) as err:
        print(f"nih_pancreas.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {report.summary()} to {args.out}")
    for case, reason in report.skipped:
        print(f"  skipped {case}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
