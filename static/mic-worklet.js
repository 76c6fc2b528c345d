// Mic capture: float samples in, 20 ms PCM16 (little-endian, 16 kHz) packets out to the main thread.
// The page asks for a 16 kHz AudioContext so the browser resamples properly; when a browser runs the
// context at another rate this falls back to linear interpolation.
class MicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.packet = o.packetSamples || 320;
    this.step = sampleRate / (o.targetRate || 16000); // input samples per output sample
    this.phase = 0;
    this.prev = 0;
    this.buf = new Int16Array(this.packet);
    this.n = 0;
  }

  emit(x) {
    const s = Math.max(-1, Math.min(1, x)); // clip: never wrap around at full scale
    this.buf[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.n === this.packet) {
      this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
      this.buf = new Int16Array(this.packet);
      this.n = 0;
    }
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    if (this.step === 1) {
      for (let i = 0; i < ch.length; i++) this.emit(ch[i]);
      return true;
    }
    // this.phase is the position of the next output sample relative to ch[0] (may be negative: between prev and ch[0])
    while (this.phase < ch.length - 1) {
      const i = Math.floor(this.phase), f = this.phase - i;
      const a = i < 0 ? this.prev : ch[i];
      const b = ch[i + 1];
      this.emit(a + (b - a) * f);
      this.phase += this.step;
    }
    this.phase -= ch.length;
    this.prev = ch[ch.length - 1];
    return true;
  }
}
registerProcessor('mic-capture', MicCapture);
