"""In-process, interleaved: the onnx backends' predict() vs a bare InferenceSession.run (what onnxruntime_test times), same input.

    python benchmarks/runtimes/inprocess_onnx.py [BATCH]   # from the repo root, PYTHONPATH=.
"""
import time, numpy as np, onnxruntime as ort
from cifarbench.backends import load_backend
from cifarbench.models.model_ref import resolve_model
m = resolve_model("flagship")
be = load_backend("onnx-int8", m)
s = ort.InferenceSession("trained/flagship/model_int8.onnx", providers=ort.get_available_providers())
import sys; B=int(sys.argv[1]) if len(sys.argv)>1 else 256; CALLS = 50 if B == 1 else 1
x = np.random.default_rng(0).integers(0,256,(B,32,32,3),dtype=np.uint8)
name = s.get_inputs()[0].name
fns = {"bench backend.predict": lambda: be.predict(x), "bare session.run (onnxruntime_test)": lambda: s.run([], {name: x})}
res = {k: [] for k in fns}
for f in fns.values(): f(); f()
for r in range(8):
    for k, f in fns.items():
        t = time.perf_counter(); [f() for _ in range(CALLS)]; res[k].append(B*CALLS / (time.perf_counter() - t))
for k, v in res.items(): print(f"{k}: best {max(v):.0f} median {np.median(v):.0f} img/s")
