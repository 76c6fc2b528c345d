"""Voice activity detection: Silero VAD (ONNX, numpy only) and the utterance segmenter."""
