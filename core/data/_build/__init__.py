"""Build tools for the shipped demo model (training, ONNX and Keras export): not library code,
run by hand (``python -m convscope.data._build.train_demo``) and exercised by a test."""
