"""Reference and peer model files, built from the float model through each toolkit's own public API.

- ``float_files``: the float model as ONNX (``torch.onnx.export``) and TFLite (``litert_torch.convert``);
- ``ort_static``: onnxruntime's ``quantize_static`` (QDQ, per-channel) on the float ONNX;
- ``litert_pt2e``: litert-torch's PT2E quantizer (its standard int8 config) to TFLite.

Every file takes float audio of one fixed chunk, shape (1, T), and returns float (1, sources, T);
the benchmarks run them with ``benchmarks.device_runner``.
"""
