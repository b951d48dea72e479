"""BareModel: a CellProfiler module for benchmarks/run.py only (not a user plugin).

It times the bare ONNX forward passes of a model (random input of the tile shape RunDLModel
used, no processing) inside the same CellProfiler process as RunDLModel, so the plate
benchmark compares the module with the bare engine under the same conditions: the same
process, threads and caches disturbed by the other modules. What to run comes from the
environment (set by benchmarks/run.py): DLMODEL_BENCH_BARE = '{"weights": PATH,
"shape": [1, 1, Y, X], "tiles": N, "objects": NAME}'.

With ``objects`` it also times what CellProfiler itself does when a module hands it a label
image (``Objects.segmented = labels``: CellProfiler converts the labels and lists the object
numbers in them), on the objects RunDLModel made for this image set: a cost every module that
makes objects pays, IdentifyPrimaryObjects included.
"""
import json
import os
import time

import numpy as np
from cellprofiler_core.constants.measurement import COLTYPE_FLOAT
from cellprofiler_core.module import Module
from cellprofiler_core.object import Objects

FEATURE = "BareModel_Seconds"
HANDOVER = "BareModel_ObjectsHandoverSeconds"
_SESSION = {}


class BareModel(Module):
    module_name = "BareModel"
    category = "Other"
    variable_revision_number = 1

    def create_settings(self):
        pass

    def settings(self):
        return []

    def run(self, workspace):
        cfg = json.loads(os.environ["DLMODEL_BENCH_BARE"])
        if "run" not in _SESSION:
            import onnxruntime as ort

            from dlmodel.engines import default_threads

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = default_threads()  # as RunDLModel's engine in this process
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(cfg["weights"], sess_options=opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: np.random.default_rng(0).normal(size=cfg["shape"]).astype(np.float32)}
            _SESSION["run"] = lambda: sess.run(None, feed)
            _SESSION["run"]()  # as RunDLModel, the first image set pays the loading
        t0 = time.perf_counter()
        for _ in range(cfg["tiles"]):
            _SESSION["run"]()
        workspace.measurements.add_image_measurement(FEATURE, time.perf_counter() - t0)
        if cfg.get("objects"):
            labels = workspace.object_set.get_objects(cfg["objects"]).segmented.astype(np.int32)
            t0 = time.perf_counter()
            Objects().segmented = labels
            workspace.measurements.add_image_measurement(HANDOVER, time.perf_counter() - t0)

    def get_measurement_columns(self, pipeline):
        cfg = json.loads(os.environ.get("DLMODEL_BENCH_BARE", "{}"))
        return [("Image", FEATURE, COLTYPE_FLOAT)] + ([("Image", HANDOVER, COLTYPE_FLOAT)] if cfg.get("objects") else [])
