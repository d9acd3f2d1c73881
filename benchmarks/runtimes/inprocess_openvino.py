"""In-process, interleaved: OpenVINO int8 at batch 256 through a dynamic-batch model (the backend before issue 24),
a model reshaped to the static slice size, and benchmark_app's way (static full batches on every request).

    python benchmarks/runtimes/inprocess_openvino.py trained/flagship/model_int8.onnx ROUNDS
"""
import time, numpy as np, sys
sys.modules.setdefault("openvino_telemetry", None)
import openvino as ov
core = ov.Core()
path = sys.argv[1]
x = np.random.default_rng(0).integers(0,256,(256,32,32,3),dtype=np.uint8)
cfg = {"PERFORMANCE_HINT":"THROUGHPUT","ENABLE_CPU_PINNING":False}
dyn = core.compile_model(core.read_model(path), "CPU", cfg)
m = core.read_model(path); m.reshape([128,32,32,3]); st128 = core.compile_model(m, "CPU", cfg)
m = core.read_model(path); m.reshape([256,32,32,3]); st256 = core.compile_model(m, "CPU", cfg)
def run(cm, chunk):
    n = int(cm.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    reqs = [cm.create_infer_request() for _ in range(n)]
    def once():
        spans=[(s,min(256,s+chunk)) for s in range(0,256,chunk)]
        busy=[False]*n
        for k,(s,e) in enumerate(spans):
            i=k%n
            if busy[i]: reqs[i].wait()
            reqs[i].start_async({0:x[s:e]}, share_inputs=True); busy[i]=True
        for i in range(n):
            if busy[i]: reqs[i].wait()
    return once, n
# benchmark_app style: all requests busy with full 256 batches continuously
def bapp(cm):
    n = int(cm.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    q = ov.AsyncInferQueue(cm, n)
    def once():  # n batches of 256 in flight
        for _ in range(n): q.start_async({0:x})
        q.wait_all()
    return once, n
fns = {"dynamic chunks(ours)": run(dyn,128), "static128 chunks": run(st128,128), "bapp-style static256 x nreq": bapp(st256)}
res = {k: [] for k in fns}
for k,(f,n) in fns.items(): f(); f()
for r in range(int(sys.argv[2])):
    for k,(f,n) in fns.items():
        t=time.perf_counter(); f(); dt=time.perf_counter()-t
        imgs = 256*(n if k.startswith("bapp") else 1)
        res[k].append(imgs/dt)
for k,v in res.items(): print(f"{k}: best {max(v):.0f} median {np.median(v):.0f} img/s (nreq {fns[k][1]})")
