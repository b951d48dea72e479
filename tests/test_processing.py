"""Processing ops against their definitions in the spec (bioimageio.core is compared in
test_engines through the every-op package; here the cases core 0.11 cannot run, and 0.4)."""
import numpy as np
import pytest

import dlmodel
from dlmodel import processing

AXES = ("batch", "channel", "y", "x")
RNG = np.random.default_rng(11)


def _v():
    import bioimageio.spec.model.v0_5 as v

    return v


def _fit(op, x, ref=None):
    return processing.fit([op], x, AXES, ref or {})(x)


def test_binarize_along_axis():
    v = _v()
    x = RNG.uniform(size=(1, 2, 5, 6)).astype(np.float32)
    op = v.BinarizeDescr(kwargs=v.BinarizeAlongAxisKwargs(axis=v.AxisId("channel"), threshold=[0.25, 0.75]))
    out = _fit(op, x)
    np.testing.assert_array_equal(out[0, 0], x[0, 0] > 0.25)
    np.testing.assert_array_equal(out[0, 1], x[0, 1] > 0.75)


def test_scale_linear_and_fixed_zmuv_along_axis():
    v = _v()
    x = RNG.normal(size=(1, 3, 4, 4)).astype(np.float32)
    ch = v.AxisId("channel")
    out = _fit(v.ScaleLinearDescr(kwargs=v.ScaleLinearAlongAxisKwargs(axis=ch, gain=[1.0, 2.0, 3.0], offset=[0.0, 1.0, -1.0])), x)
    np.testing.assert_allclose(out[0, 2], x[0, 2] * 3 - 1, rtol=1e-6)
    out = _fit(v.FixedZeroMeanUnitVarianceDescr(kwargs=v.FixedZeroMeanUnitVarianceAlongAxisKwargs(axis=ch, mean=[0, 1, 2], std=[1, 2, 4])), x)
    np.testing.assert_allclose(out[0, 1], (x[0, 1] - 1) / (2 + 1e-6), rtol=1e-6)


def test_statistics_per_channel_and_whole_tensor():
    v = _v()
    x = np.stack([RNG.normal(5, 2, (8, 9)), RNG.normal(-3, 7, (8, 9))])[None].astype(np.float32)
    yx = [v.AxisId("y"), v.AxisId("x")]
    per_channel = _fit(v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(axes=yx)), x)
    np.testing.assert_allclose(per_channel.mean(axis=(2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(per_channel.std(axis=(2, 3)), 1, atol=1e-4)
    joint = _fit(v.ZeroMeanUnitVarianceDescr(), x)
    np.testing.assert_allclose(joint, (x - x.mean()) / (x.std() + 1e-6), atol=1e-5)
    sr = _fit(v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=yx, min_percentile=0, max_percentile=100)), x)
    np.testing.assert_allclose(sr.min(axis=(2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(sr.max(axis=(2, 3)), 1, atol=1e-5)


def test_clip_percentiles_use_inverted_cdf():
    v = _v()
    x = np.arange(100, dtype=np.float32).reshape(1, 1, 10, 10)
    out = _fit(v.ClipDescr(kwargs=v.ClipKwargs(min_percentile=10, max_percentile=90)), x)
    assert out.min() == 9 and out.max() == 89  # actual data values, as inverted_cdf gives


def test_statistics_come_from_the_whole_image_not_the_tile():
    v = _v()
    x = np.concatenate([np.zeros((1, 1, 8, 8)), np.ones((1, 1, 8, 8)) * 10], axis=2).astype(np.float32)
    fitted = processing.fit([v.ZeroMeanUnitVarianceDescr()], x, AXES, {}, tiled_axes=("y", "x"))
    assert fitted.tile_safe
    top_tile = fitted(x[:, :, :8])
    np.testing.assert_allclose(top_tile, -1, atol=1e-5)  # (0 - 5) / 5, not 0 as the tile alone would give


def test_statistics_varying_along_a_tiled_axis_are_not_tile_safe():
    v = _v()
    x = RNG.normal(size=(1, 1, 6, 7)).astype(np.float32)
    per_row = v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(axes=[v.AxisId("x")]))
    assert not processing.fit([per_row], x, AXES, {}, tiled_axes=("y", "x")).tile_safe


def test_ops_chain_statistics_after_earlier_ops():
    v = _v()
    x = RNG.normal(3, 2, size=(1, 1, 10, 10)).astype(np.float32)
    chain = [v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=4.0, offset=1.0)), v.ZeroMeanUnitVarianceDescr()]
    out = processing.fit(chain, x, AXES, {})(x)
    np.testing.assert_allclose(out.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(), 1, atol=1e-4)


def test_custom_ops_are_refused_clearly():
    from bioimageio.spec.model.v0_5 import StardistPostprocessingDescr  # noqa: F401  (exists in spec 0.5.12)

    class Custom:
        id = "custom"
        kwargs = None

    with pytest.raises(dlmodel.SpecError, match="'custom' is not supported.*runs code"):
        processing.fit_op(Custom(), np.zeros((1, 1, 2, 2)), AXES, {})


def test_format_04_packages_in_every_zmuv_mode(v04):
    model = dlmodel.load(v04)
    assert model.spec.descr.format_version.startswith("0.5")  # converted on load
    report = model.test()
    assert report.ok, report.summary()
    x = RNG.normal(10, 3, (50, 45)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, tile=24)["prob"], model.predict(x, tile=False)["prob"], atol=1e-5)


@pytest.mark.parametrize("dims", [(0, 1, 2), (1, 2), (0,), (2,)])
def test_chunked_mean_std_equals_the_direct_formula(monkeypatch, dims):
    # large images are reduced in chunks (no whole-image float64 copy); same numbers
    x = np.random.default_rng(3).integers(0, 60000, size=(3, 50, 70)).astype(np.uint16)
    monkeypatch.setattr(processing, "_CHUNK", 500)
    mean, std = processing._mean_std(x, dims)
    ref = x.astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=dims, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=dims, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("stat", ["zero_mean_unit_variance", "scale_range"])
def test_fitting_after_a_lossless_cast_does_not_copy_the_image(stat):
    # spec 0.5 chains start with ensure_dtype float32: a uint16 image's statistics are those of
    # its float32 cast, so fitting must not materialise the cast (256 MB for an 8192x8192 image)
    import tracemalloc

    v = _v()
    x = np.random.default_rng(4).integers(0, 60000, size=(1, 1, 2048, 1024)).astype(np.uint16)
    if stat == "zero_mean_unit_variance":
        norm = v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(axes=[v.AxisId("y"), v.AxisId("x")]))
    else:
        norm = v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=[v.AxisId("y"), v.AxisId("x")], min_percentile=1, max_percentile=99.8))
    cast = v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))
    tracemalloc.start()
    fitted = processing.fit([cast, norm, cast], x, AXES)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if stat == "zero_mean_unit_variance":
        assert peak < x.size * 4 / 2, f"fitting allocated {peak} bytes, a float32 copy is {x.size * 4}"
    # same numbers as fitting on the float32 image itself
    ref = processing.fit([cast, norm, cast], x.astype(np.float32), AXES)
    np.testing.assert_allclose(fitted(x[..., :300, :200]), ref(x[..., :300, :200].astype(np.float32)), rtol=1e-5, atol=1e-6)


def test_sigmoid_and_softmax_match_scipy_on_extreme_values():
    # our one-buffer versions run on every tile; same numbers as scipy's, no overflow warnings
    import warnings

    from scipy.special import expit, softmax

    v = _v()
    x = np.concatenate([RNG.normal(0, 30, 4000), [-1e4, -100, -88.8, 0, 88.8, 100, 1e4]]).astype(np.float32)
    x = x.reshape(1, 1, -1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sig = _fit(v.SigmoidDescr(), x)
        soft = _fit(v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis=v.AxisId("y"))), x)
    assert sig.dtype == np.float32
    np.testing.assert_allclose(sig, expit(x), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(soft, softmax(x, axis=2), rtol=1e-5, atol=1e-30)


def test_a_boolean_image_is_cast_before_its_percentiles():
    # a bool -> float32 cast is lossless too, but numpy's percentiles refuse booleans
    v = _v()
    x = np.random.default_rng(5).random((1, 1, 40, 30)) > 0.7
    cast = v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))
    norm = v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=[v.AxisId("y"), v.AxisId("x")], min_percentile=1, max_percentile=99))
    out = processing.fit([cast, norm], x, AXES)(x)
    np.testing.assert_allclose(out, x.astype(np.float32) / (1 + 1e-6), rtol=1e-6)
