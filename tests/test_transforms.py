"""unetq/transforms.py: every paired transform keeps image and mask aligned, masks stay binary,
randomness comes from the per-item generator only, and the geometry matches independent numpy."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from unetq.data import SliceDataset
from unetq.transforms import (CenterCrop, ChannelShift, Compose, ElasticTransform, InstanceNorm, RandomAffine,
                              apply_affine, resample)


def blobs(size=64, seed=0):
    """A piecewise-constant image (0/1 blobs) and the mask drawn from the image itself."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), 4)
    image = (field > 0.1).astype(np.float32)
    return image, (image > 0.5).astype(np.uint8)


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- centre crop

def test_center_crop_pads_and_crops_image_and_mask_alike():
    image = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    mask = (image % 3 == 0).astype(np.uint8)
    out_img, out_mask = CenterCrop(8, 4)(image, mask)
    assert out_img.shape == out_mask.shape == (8, 4)
    # rows: 6 -> 8 pads one zero row each side; cols: 10 -> 4 keeps columns 3..6
    assert np.array_equal(out_img[1:7], image[:, 3:7]) and not out_img[0].any() and not out_img[7].any()
    assert np.array_equal(out_mask[1:7], mask[:, 3:7])


# --------------------------------------------------------------------------- affine

def test_apply_affine_golden_rotation_translation_identity():
    a = rng().random((9, 9)).astype(np.float32)
    assert np.array_equal(apply_affine(a, 90), np.rot90(a))          # counter-clockwise as displayed
    assert np.array_equal(apply_affine(a, -90), np.rot90(a, -1))
    assert np.array_equal(apply_affine(a, 0), a)
    shifted = apply_affine(a, 0, translate=(2, -1))
    assert np.array_equal(shifted[2:, :-1], a[:-2, 1:]) and not shifted[:2].any() and not shifted[:, -1].any()
    # scale 2 about the centre: the centre pixel stays, its neighbour at +1 comes from +0.5 -> nearest
    doubled = apply_affine(a, 0, scale=2.0)
    assert doubled[4, 4] == a[4, 4]


def test_random_affine_keeps_image_and_mask_aligned():
    image, mask = blobs()
    for seed in range(5):
        out_img, out_mask = RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.8, 1.2))(image, mask, rng(seed))
        assert out_mask.dtype == np.uint8 and set(np.unique(out_mask)) <= {0, 1}
        assert np.array_equal(out_img > 0.5, out_mask.astype(bool))
        assert not np.array_equal(out_mask, mask)                     # it did move


def test_random_affine_parameters_in_range_and_shared():
    t = RandomAffine()
    angles, shifts, scales = zip(*(t.params((200, 200), rng(s)) for s in range(300)))
    assert max(map(abs, angles)) <= 4.6 and max(map(abs, angles)) > 4.0
    assert np.abs(np.array(shifts)).max() <= 6.0                      # 3 % of 200 px
    assert 0.98 <= min(scales) and max(scales) <= 1.02
    # the call applies the drawn parameters to both arrays (independent recomputation)
    image, mask = blobs()
    angle, shift, scale = t.params(image.shape, rng(7))
    out_img, out_mask = t(image, mask, rng(7))
    assert np.array_equal(out_img, apply_affine(image, angle, shift, scale, order=0))
    assert np.array_equal(out_mask, apply_affine(mask, angle, shift, scale, order=0))


# --------------------------------------------------------------------------- elastic

def test_elastic_shares_one_field_exactly_with_nearest_image():
    image, mask = blobs()
    t = ElasticTransform(alpha_range=(60, 60), sigma_range=(4, 4), p=1.0, order=0)
    out_img, out_mask = t(image, mask, rng(3))
    assert np.array_equal(out_img > 0.5, out_mask.astype(bool))
    assert (out_mask != mask).mean() > 0.01                            # the deformation is real


def test_elastic_default_bilinear_image_agrees_with_mask_up_to_the_boundary():
    image, mask = blobs(96)
    out_img, out_mask = ElasticTransform(p=1.0)(image, mask, rng(1))
    assert set(np.unique(out_mask)) <= {0, 1}
    disagree = (out_img > 0.5) != out_mask.astype(bool)
    edge = ndimage.binary_dilation(out_mask.astype(bool)) & ~ndimage.binary_erosion(out_mask.astype(bool))
    assert disagree.mean() < 0.01 and not (disagree & ~edge).any()
    # two DIFFERENT fields (the original's bug) would misalign far more: the test can fail
    wrong_img, _ = ElasticTransform(p=1.0)(image, mask, rng(2))
    assert ((wrong_img > 0.5) != out_mask.astype(bool)).mean() > 5 * max(disagree.mean(), 1e-4)


def test_elastic_probability_and_field_size():
    t = ElasticTransform()                                              # p = 0.3
    image = rng(1).random((32, 32)).astype(np.float32)                  # noise: any deformation shows
    mask = (image > 0.5).astype(np.uint8)
    applied = [not np.array_equal(t(image, mask, rng(s))[0], image) for s in range(400)]
    assert 0.24 < np.mean(applied) < 0.36
    assert ElasticTransform(p=0.0)(image, mask, rng())[0] is image
    field = t.field((200, 200), rng())
    assert field.shape == (2, 200, 200) and 0.5 < field.std() < 3.0     # ~1-2 px displacements


# --------------------------------------------------------------------------- intensity

def test_channel_shift_and_instance_norm():
    image, mask = blobs()
    image = image * 3 + 2
    shifted, same_mask = ChannelShift()(image, mask, rng(4))
    delta = shifted - image
    assert same_mask is mask and np.allclose(delta, delta.flat[0]) and 0 < abs(delta.flat[0]) <= 0.1
    norm, _ = InstanceNorm()(image, mask)
    assert norm.dtype == np.float32 and abs(norm.mean()) < 1e-6 and abs(norm.std() - 1) < 1e-5
    # after instance normalisation the shift is gone (the GM pipeline's order)
    assert np.allclose(InstanceNorm()(shifted, mask)[0], norm, atol=1e-5)


def test_instance_norm_constant_slice_is_zeros_not_nan():
    for value in (0.0, 5.0):
        out, _ = InstanceNorm()(np.full((8, 8), value, np.float32), np.zeros((8, 8), np.uint8))
        assert np.array_equal(out, np.zeros((8, 8), np.float32))


# --------------------------------------------------------------------------- compose + dataset seeding

def test_compose_is_a_function_of_the_generator():
    image, mask = blobs()
    t = Compose([ElasticTransform(p=0.5), RandomAffine(), ChannelShift(), InstanceNorm()])
    a, b, c = t(image, mask, rng(9)), t(image, mask, rng(9)), t(image, mask, rng(10))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert t.describe() == "ElasticTransform -> RandomAffine -> ChannelShift -> InstanceNorm"   # names, not reprs


def test_slice_dataset_items_repeat_per_epoch_whatever_the_workers():
    images = np.stack([blobs(48, s)[0] for s in range(6)])
    ds = SliceDataset(images, (images > 0.5).astype(np.uint8),
                      transform=Compose([ElasticTransform(p=1.0), RandomAffine(), InstanceNorm()]), seed=5)

    def epoch(n, workers):
        ds.set_epoch(n)
        return torch.cat([b["image"] for b in DataLoader(ds, batch_size=2, num_workers=workers)])

    first = epoch(1, 0)
    assert torch.equal(first, epoch(1, 2))                              # workers do not change the stream
    assert not torch.equal(first, epoch(2, 0))                          # a new epoch draws anew


# --------------------------------------------------------------------------- resample

def test_resample_keeps_field_of_view_and_reports_exact_spacing():
    mask = np.zeros((50, 60), np.uint8)
    yy, xx = np.mgrid[:50, :60]
    mask[(yy - 25) ** 2 + (xx - 30) ** 2 < 15 ** 2] = 1
    up, spacing = resample(mask, (0.5, 0.5), 0.25, nearest=True)
    assert up.shape == (100, 120) and spacing == (0.25, 0.25) and set(np.unique(up)) == {0, 1}
    area_mm2 = mask.sum() * 0.25
    assert abs(up.sum() * 0.25 ** 2 - area_mm2) / area_mm2 < 0.02      # the same disc in mm^2
    odd, sp = resample(np.ones((49, 54), np.float32), (0.5, 0.5), 0.3)
    assert odd.shape == (82, 90) and sp == pytest.approx((49 * 0.5 / 82, 54 * 0.5 / 90))
    assert np.allclose(odd, 1.0)
