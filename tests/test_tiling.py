"""The tile planner: every output pixel written exactly once, from a tile's valid region."""
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import dlmodel
from dlmodel import tiling


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 5000), inner=st.integers(1, 600), margin=st.integers(0, 64), align=st.sampled_from([1, 2, 4]))
def test_plan_axis_covers_each_pixel_once_from_valid_regions(length, inner, margin, align):
    size = inner + 2 * margin
    if inner < align:
        with pytest.raises(dlmodel.InputError):
            tiling.plan_axis("x", length, size, margin, align)
        return
    plan = tiling.plan_axis("x", length, size, margin, align)
    covered = np.zeros(length, int)
    for t in plan.tiles:
        assert t.size == size
        assert t.start + margin <= t.write_start < t.write_stop <= t.start + size - margin
        if len(plan.tiles) > 1:
            assert (t.start + margin) % align == 0
        covered[t.write_start:t.write_stop] += 1
    assert (covered == 1).all()
    if align == 1:  # no more tiles than needed (one more at most for even spreading)
        assert len(plan.tiles) <= max(1, -(-length // inner))


def test_2048_with_the_nuclei_model_geometry_needs_5_tiles_per_axis():
    plan = tiling.plan_axis("x", 2048, 512, 32)
    assert len(plan.tiles) == 5 and plan.tiles[0].start == -32 and plan.tiles[-1].write_stop == 2048


def test_margin_accounts_for_scale_and_offset():
    from fractions import Fraction

    assert tiling.margin_for(32, 0, Fraction(1), 1) == 32
    assert tiling.margin_for(4, 0, Fraction(2), 1) == 2  # x2 up-sampling: 4 output px = 2 input px
    assert tiling.margin_for(0, -16, Fraction(1), 1) == 8  # valid convolutions lose 8 px per side
    assert tiling.margin_for(3, 0, Fraction(1, 2), 2) == 6  # down-sampling: even margins


@pytest.mark.parametrize("length, tiles_per_axis, size", [(300, 1, 368), (2048, 3, 752), (8192, 9, 976)])
def test_parameterized_models_get_the_fewest_tiles_and_no_larger_than_needed(length, tiles_per_axis, size):
    # the default model: min 72, step 8, halo 32; 1 Mpx budget -> tiles of at most 1024 px
    from dlmodel.package import open_spec
    from dlmodel.tiling import make_plan

    spec, _ = open_spec(Path(__file__).resolve().parents[1] / "models" / "nuclei_default")
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, 1, length, length), (0, 0, 0, 0))
    plan = make_plan(spec, {spec.inputs[0].id: x})
    # derived from the spec: the fewest tiles the 1 Mpx budget allows, each no longer than one
    # valid step above what that many tiles need
    axis = spec.inputs[0].axis("x")
    margin = next(a.margin for a in plan.axes if a.id == "x")
    whole = axis.smallest_valid(length + 2 * margin)
    n = 1 if whole <= 1024 else -(-length // (axis.largest_valid(1024) - 2 * margin))
    assert [len(p.tiles) for p in plan.axis_plans] == [n] * 2
    assert plan.tile_shape["x"] <= min(whole, axis.smallest_valid(-(-length // n) + 2 * margin) + axis.step)
    # regression pin of today's numbers (docs/performance.md quotes them)
    assert [len(p.tiles) for p in plan.axis_plans] == [tiles_per_axis] * 2
    assert plan.tile_shape == {"y": size, "x": size}
    inner = size - 2 * 32
    assert len(plan.tiles) <= 1.15 * max(1.0, length * length / inner**2)


def test_tiles_start_a_whole_number_of_size_steps_apart():
    """A size step is the network's down-sampling: tiles in the same phase give the output of
    one whole-image pass (the StarDist seam test in test_families.py failed without this)."""
    from dlmodel.package import open_spec
    from dlmodel.tiling import make_plan

    spec, _ = open_spec(Path(__file__).resolve().parents[1] / "models" / "nuclei_default")
    step = spec.inputs[0].axis("x").step
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, 1, 1500, 1100), (0, 0, 0, 0))
    plan = make_plan(spec, {spec.inputs[0].id: x}, tile=200)
    for p in plan.axis_plans:
        assert len(p.tiles) > 2
        assert {(t.start + p.margin) % step for t in p.tiles} == {0}


def test_check_file_fits_and_predict_share_one_plan(tmp_path, monkeypatch):
    """One plan per image: the header check before reading a file and the prediction after it plan
    once between them (tiling.make_plan remembers plans by package and input shapes)."""
    import tifffile

    import dlmodel
    from dlmodel import tiling

    model = dlmodel.load(ROOT / "models" / "nuclei_default")
    image = np.random.default_rng(1).integers(0, 4000, (300, 280), dtype=np.uint16)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image)
    made = []
    real = tiling.plan_axis
    monkeypatch.setattr(tiling, "plan_axis", lambda *a, **k: made.append(a[0]) or real(*a, **k))
    model.check_file_fits(path, axes="yx", tile=128)
    first = len(made)
    assert first > 0
    model.predict(image, axes="yx", tile=128)
    assert len(made) == first, "predict planned the image again"
    model.predict(image[:200], axes="yx", tile=128)
    assert len(made) > first  # another shape is another plan
