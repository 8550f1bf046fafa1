"""Export the int8 x int1 quality model, check it, run it bit-packed, and measure it (issue 6).

    python examples/bam_deploy.py --model runs/bam/bam_s0.pt --float runs/bam/float_s0.pt

1. QDQ-ONNX and int8 TFLite of the bam checkpoint, verified against the simulation;
2. every binary map in both files holds only 0 and 1;
3. the bit-packed runtime against both files on every test clip (output codes);
4. activation memory of one 9 s inference: float32, int8, packed 1-bit (computed),
   and the packed runtime's (measured); the multiply-adds with a binary operand;
5. latency (median ms, 2 threads) of the float and the int8 x int1 model on LiteRT and ORT.
Writes runs/bam/deploy.json (copy it to benchmarks/results/bam/ to publish it).
The packed runtime follows XNNPACK's arithmetic, so it matches the .tflite file exactly; the
ONNX file's ReduceMean runs in float in onnxruntime and rounds a few near-.5 means the other way.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import exporters
from benchmarks.device_runner import time_runs
from compressor.bam.data import QualityDataset
from compressor.bam.frontend import MelConfig
from compressor.bam.train import quality_metrics
from compressor.checkpoint import load_model
from compressor.fileio import write_text_atomic
from compressor.zoo.dnsmos_cnn import DnsmosConfig, layer_costs
from exporters.sessions import open_session
from runtimes.binary_maps import onnx_binary_maps, tflite_binary_maps
from runtimes.packed_binary import from_quantized

MB = 1e6


def paper_memory(config: DnsmosConfig, frames: int) -> dict[str, float]:
    """The paper's accounting (it gives 9.66 MB float): input + Table 1's activations + the weights."""
    rows = layer_costs(config, frames)
    acts, params, inputs = sum(r["activations"] for r in rows), sum(r["params"] for r in rows), frames * config.n_mels
    binary = sum(r["activations"] for r in rows[:4])
    return {"float32": 4 * (inputs + acts + params), "int8": inputs + acts + params,
            "int8_weights_1bit_maps": inputs + binary // 8 + (acts - binary) + params}


def activation_memory(config: DnsmosConfig, frames: int) -> dict[str, float]:
    """Bytes of every activation tensor of one inference (input, conv maps, pooled maps, head), summed."""
    rows = layer_costs(config, frames)
    conv_maps = [r["activations"] for r in rows[:4]]
    pooled = [c * ((frames >> (k + 1)) * (config.n_mels >> (k + 1))) for k, c in enumerate(config.channels[:3])]
    head = config.channels[-1] + sum(r["activations"] for r in rows[4:])  # pooled vector + dense outputs
    values, inputs = sum(conv_maps) + sum(pooled), frames * config.n_mels
    return {"float32": 4 * (inputs + values + head), "int8": inputs + values + head,
            "packed_1bit": inputs + sum(-(-c // 32) * 4 * (v // c) for c, v in
                                        zip(list(config.channels) + list(config.channels[:3]), conv_maps + pooled))
            + head}


def median_ms(func, runs: int, warmup: int = 2) -> float:
    return float(np.median(time_runs(func, runs, warmup)))


def float_files(model: torch.nn.Module, example: torch.Tensor, out: Path) -> dict[str, Path]:
    """The float model as a plain ONNX and a float TFLite file, for the latency baseline."""
    import litert_torch

    model = model.eval()
    paths = {"onnx": out / "float.onnx", "tflite": out / "float.tflite"}
    torch.onnx.export(model, (example,), str(paths["onnx"]), input_names=["mel"], output_names=["score"], dynamo=False)
    litert_torch.convert(model, (example,)).export(str(paths["tflite"]))
    return paths


def float_latency(paths: dict[str, Path], example: np.ndarray, runs: int) -> dict[str, float]:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(paths["onnx"]), opts, providers=["CPUExecutionProvider"])
    interp = Interpreter(model_path=str(paths["tflite"]), num_threads=2)
    interp.allocate_tensors()
    idx = interp.get_input_details()[0]["index"]

    def run_tflite() -> None:
        interp.set_tensor(idx, example)
        interp.invoke()

    return {"ort_float_ms": median_ms(lambda: sess.run(None, {"mel": example}), runs),
            "litert_float_ms": median_ms(run_tflite, runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/bam/bam_s0.pt"))
    parser.add_argument("--float", dest="float_model", type=Path, default=Path("runs/bam/float_s0.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/bam_data/test.npz"))
    parser.add_argument("--out", type=Path, default=Path("runs/bam"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--max-clips", type=int, help="compare the packed runtime on the first N test clips only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    test = QualityDataset(args.data)
    feats, labels = test.features.numpy(), test.labels.numpy()
    n = min(len(labels), args.max_clips or len(labels))
    qmodel = load_model(args.model).model.eval()
    mel = MelConfig()
    info = {"task": "quality", "recipe": "bam", "frontend": mel.to_dict(), "source": str(args.model)}
    report: dict = {"model": str(args.model)}

    files = {}
    for target, suffix in (("onnx", "onnx"), ("tflite", "tflite")):
        path = args.out / f"bam_int8x1.{suffix}"
        result = exporters.export(qmodel, target, path, calibration=list(feats[:4]), model_info=info)
        files[target] = path
        report[f"export_{target}"] = {"bytes": path.stat().st_size, "ops": result.ops["count"],
                                      "float_ops": result.ops["float_op_count"],
                                      "verification": result.verification.to_dict() if result.verification else None,
                                      "seconds": round(result.seconds, 1)}
        print(target, report[f"export_{target}"])

    sessions = {t: open_session(p, threads=2) for t, p in files.items()}
    maps = {}
    for target, read in (("onnx", onnx_binary_maps), ("tflite", tflite_binary_maps)):
        spec = sessions[target].metadata.inputs[0]
        values = read(files[target], spec.quantize(feats[0].reshape(spec.shape)))
        maps[target] = {"tensors": len(values), "values": sorted({int(v) for a in values.values() for v in np.unique(a)}),
                        "ones_fraction": [round(float(a.mean()), 3) for a in values.values()]}
    report["binary_maps"] = maps
    print("binary maps", maps)

    packed = from_quantized(qmodel)
    sim_lsb = {t: [] for t in sessions}  # end to end: the file's output codes vs the simulation's
    agree = {t: [] for t in sessions}
    preds = {t: [] for t in sessions}
    preds["packed"] = []
    for i in range(n):
        for target, sess in sessions.items():
            spec = sess.metadata.inputs[0]
            codes = spec.quantize(feats[i].reshape(spec.shape))
            out = int(sess.run_codes(codes)[0].reshape(-1)[0]) - (128 if spec.dtype == "uint8" else 0)
            shift = 128 if spec.dtype == "uint8" else 0
            mine = int(packed.run_codes((codes.astype(np.int16) - shift).astype(np.int8)).reshape(-1)[0])
            agree[target].append(abs(out - mine))
            with torch.no_grad():
                simulated = qmodel(torch.from_numpy(spec.dequantize(codes)))
            sim_code = int(sess.metadata.outputs[0].quantize(simulated.numpy()).reshape(-1)[0]) - shift
            sim_lsb[target].append(abs(out - sim_code))
            preds[target].append(sess.metadata.outputs[0].dequantize(np.array(out + shift)).item())
        preds["packed"].append(packed.predict(feats[i]))
    report["packed_vs_files"] = {t: {"clips": n, "exact": int(sum(d == 0 for d in v)), "max_lsb": int(max(v)),
                                     "differing_clips": [i for i, d in enumerate(v) if d]}
                                 for t, v in agree.items()}
    report["file_vs_simulation"] = {t: {"clips": n, "exact": int(sum(d == 0 for d in v)), "max_lsb": int(max(v))}
                                    for t, v in sim_lsb.items()}
    print("files vs simulation", report["file_vs_simulation"])
    report["test_metrics_of_files"] = {t: quality_metrics(np.array(p), labels[:n]) for t, p in preds.items()}
    print("packed vs files", report["packed_vs_files"])

    frames = feats.shape[1]
    config = DnsmosConfig()
    computed = activation_memory(config, frames)
    report["activation_memory_bytes"] = {"computed": computed, "packed_measured": packed.last_memory,
                                         "paper_accounting": paper_memory(config, frames)}
    rows = layer_costs(config, frames)
    total = sum(r["macs_torchinfo"] for r in rows)
    binary = sum(r["macs_torchinfo"] for r in rows if r["binary_input"])
    report["macs"] = {"total_torchinfo": total, "binary_operand": binary, "share": binary / total,
                      "weight_only_total": sum(r["macs"] for r in rows),
                      "popcount_word_ops_packed": packed.last_popcounts,
                      "params": sum(r["params"] for r in rows)}

    latency = {}
    for target, sess in sessions.items():
        spec = sess.metadata.inputs[0]
        codes = spec.quantize(feats[0].reshape(spec.shape))
        latency[f"{'ort' if target == 'onnx' else 'litert'}_int8x1_ms"] = median_ms(lambda: sess.run_codes(codes),
                                                                                    args.runs)
    latency["packed_numpy_ms"] = median_ms(lambda: packed.predict(feats[0]), max(3, args.runs // 5), warmup=1)
    float_model = load_model(args.float_model).model.eval()
    example = torch.from_numpy(feats[:1].copy())
    latency.update(float_latency(float_files(float_model, example, args.out), feats[:1].copy(), args.runs))
    with torch.no_grad():
        latency["pytorch_float_ms"] = median_ms(lambda: float_model(example), args.runs)
    report["latency_ms_2_threads"] = latency
    print("latency", latency)
    write_text_atomic(args.out / "deploy.json", json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
