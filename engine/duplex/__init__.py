"""The full-duplex turn controller: generator/monitor roles over two vLLM engines, streaming speech."""
