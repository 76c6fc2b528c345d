"""VITA-1.5 on vLLM: checkpoint resolution, preprocessing, prompt building and the async engine."""
