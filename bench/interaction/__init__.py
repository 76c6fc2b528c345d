"""Interaction benchmark parts: synthetic clips with ground truth (``clips``), the client's playback model and
per-scenario metrics (``timeline``), and the real-time Socket.IO client that records the timeline (``client``)."""
