"""gRPC client for TF Serving's PredictionService, example packing, ranking, and a local server."""
