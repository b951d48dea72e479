import dlmodel, pytest, numpy as np
@pytest.mark.parametrize("fx", ["keras_h5", "keras_v3", "tf_saved_model"])
def test_build(fx, request):
    p = request.getfixturevalue(fx)
    m = dlmodel.load(p)
    r = m.test()
    print(m, r.summary())
    assert r.ok
    x = np.random.default_rng(0).normal(0,1,(50, 70)).astype(np.float32)
    a = m.predict(x, tile=False)["out"]; b = m.predict(x, tile=24)
    print(b.axes, b["out"].shape, np.abs(a-b["out"]).max(), len(b.plan.tiles))
