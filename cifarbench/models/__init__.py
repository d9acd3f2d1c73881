"""What a model is: the zoo, the manifest and its input contract, reading Keras and ONNX files."""
