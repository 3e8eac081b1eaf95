"""Training the reference autoencoder: the model, its statistics and thresholds, ONNX
export and its check, the report, and the same training as a SageMaker job."""
