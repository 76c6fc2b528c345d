// Reply playback: a sample-accurate queue of 24 kHz PCM16 chunks, gapless across chunks.
// Messages in: {type:'chunk', replyId, pcm: ArrayBuffer}, {type:'flush'} (drop everything now),
// {type:'pause'} (stop at once, keep the queue: the user may only be coughing) and {type:'resume'}.
// Messages out: {type:'started', replyId} (its first sample), {type:'playing', replyId} (audible again after
// the queue ran dry), {type:'played', replyId, samples} (about every 100 ms while playing),
// {type:'paused', replyId, samples}, {type:'flushed', replyId, samples, dropped} and {type:'drained', replyId,
// samples} (the queue ran dry: the reply ended, or its audio arrives late).
class ReplyPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];      // [{replyId, data: Int16Array}]
    this.offset = 0;      // read position in queue[0].data
    this.played = new Map(); // replyId -> samples actually rendered
    this.current = null;  // replyId being rendered
    this.sinceReport = 0;
    this.paused = false;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'chunk') {
      this.queue.push({replyId: msg.replyId, data: new Int16Array(msg.pcm)});
    } else if (msg.type === 'pause') {
      this.paused = true;
      if (this.current) {
        this.port.postMessage({type: 'paused', replyId: this.current, samples: this.played.get(this.current)});
      }
    } else if (msg.type === 'resume') {
      this.paused = false;
    } else if (msg.type === 'flush') {
      this.paused = false;
      let dropped = 0;
      for (const c of this.queue) dropped += c.data.length;
      dropped -= this.offset;
      // After the queue ran dry, chunks may wait unplayed (paused): they still belong to a reply to name.
      const replyId = this.current || (this.queue.length ? this.queue[0].replyId : null);
      this.queue = [];
      this.offset = 0;
      this.current = null;
      this.port.postMessage({type: 'flushed', replyId, samples: replyId ? this.played.get(replyId) || 0 : 0, dropped});
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (!this.paused && i < out.length && this.queue.length) {
      const head = this.queue[0];
      if (this.current !== head.replyId) {
        this.current = head.replyId;
        if (!this.played.has(head.replyId)) {
          this.played.set(head.replyId, 0);
          this.port.postMessage({type: 'started', replyId: head.replyId});
        } else {
          this.port.postMessage({type: 'playing', replyId: head.replyId}); // audible again after a gap
        }
      }
      const n = Math.min(out.length - i, head.data.length - this.offset);
      for (let k = 0; k < n; k++) out[i + k] = head.data[this.offset + k] / 32768;
      i += n;
      this.offset += n;
      this.played.set(head.replyId, this.played.get(head.replyId) + n);
      this.sinceReport += n;
      if (this.offset >= head.data.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    out.fill(0, i);
    if (this.current && this.sinceReport >= 2400) {
      this.sinceReport = 0;
      this.port.postMessage({type: 'played', replyId: this.current, samples: this.played.get(this.current)});
    }
    if (this.current && !this.queue.length && !this.paused) {
      this.port.postMessage({type: 'drained', replyId: this.current, samples: this.played.get(this.current)});
      this.current = null;
      this.sinceReport = 0;
    }
    if (this.played.size > 32) this.played.delete(this.played.keys().next().value); // bounded memory
    return true;
  }
}
registerProcessor('reply-player', ReplyPlayer);
