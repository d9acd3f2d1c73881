"""`cifarbench convert`: staged export to TFLite/ONNX with an exporter registry and parity checks."""
