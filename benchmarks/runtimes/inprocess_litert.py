"""In-process, interleaved: the tflite backends' predict() vs a bare Interpreter.invoke vs LiteRT's CompiledModel.run
(the API litert-benchmark times), same input.

    python benchmarks/runtimes/inprocess_litert.py trained/flagship/model_fp16.tflite tflite-fp16 256 ROUNDS
"""
import time, sys, numpy as np
from ai_edge_litert.compiled_model import CompiledModel
from ai_edge_litert.hardware_accelerator import HardwareAccelerator
from ai_edge_litert.options import CpuOptions, Options
from ai_edge_litert.environment import Environment, EnvironmentOptions
from cifarbench.backends import load_backend
from cifarbench.models.model_ref import resolve_model
path = sys.argv[1]; name = sys.argv[2]; B = int(sys.argv[3])
m = resolve_model("flagship"); be = load_backend(name, m)
env = Environment.create(options=EnvironmentOptions())
cm = CompiledModel.from_file(path, environment=env, options=Options(hardware_accelerators=HardwareAccelerator(HardwareAccelerator.CPU), cpu_options=CpuOptions(num_threads=2)))
cm.resize_input_tensor(0, [B, 32, 32, 3], 0, strict=False)
sig = list(cm.get_signature_list().keys())[0]
ins = {n: cm.create_input_buffer_by_name(sig, n) for n in cm.get_input_tensor_details(sig)}
outs = {n: cm.create_output_buffer_by_name(sig, n) for n in cm.get_output_tensor_details(sig)}
x = np.random.default_rng(0).integers(0, 256, (B, 32, 32, 3), dtype=np.uint8)
for b in ins.values(): b.write(x)
fns = {"bench Interpreter predict": lambda: be.predict(x), "tool CompiledModel run": lambda: cm.run_by_name(sig, ins, outs),
       "bare Interpreter invoke": None}
it = be.interpreter
be.predict(x)
def bare():
    it.invoke()
fns["bare Interpreter invoke"] = bare
res = {k: [] for k in fns}
for f in fns.values(): f(); f()
for r in range(int(sys.argv[4])):
    for k, f in fns.items():
        t = time.perf_counter(); f(); res[k].append(B / (time.perf_counter() - t))
for k, v in res.items(): print(f"{name} b{B} {k}: best {max(v):.0f} median {np.median(v):.0f} img/s")
