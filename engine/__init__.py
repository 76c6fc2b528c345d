"""The conversation engine: VITA-1.5 on vLLM, the speech head, and the duplex turn controller.

Import submodules directly; this package imports nothing heavy (no torch, no vLLM) at import time.
"""
