// vita-duplex page: mic -> server (PCM16 16 kHz), camera -> server (JPEG), reply audio -> gapless player.
// Protocol: docs/protocol.md. window.vita exposes state for diagnostics and the browser tests.
'use strict';

const $ = (id) => document.getElementById(id);
const now = () => performance.now();

const vita = window.vita = {
  stats: {
    connected: false, transport: null, refused: null, secure: window.isSecureContext,
    packetsSent: 0, samplesSent: 0, framesSent: 0, firstPacketAt: null,
    vad: [], replies: [], interrupts: [], flushed: [], played: {}, errors: [], latencies: [],
    playbackReports: 0, pauses: [], resumes: [], judgements: [], timelines: [],
  },
  hello: null,
  epoch: 0,
  running: false,
};
const stats = vita.stats;
window.addEventListener('error', (e) => stats.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => stats.errors.push(String(e.reason)));

// ------------------------------------------------------------------ UI helpers

function pill(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.className = 'pill ' + cls;
}
function banner(text) {
  const el = $('banner');
  el.textContent = text || '';
  el.hidden = !text;
}
function status(text) { $('status').textContent = text; }

const transcript = {
  items: new Map(), // replyId -> <li>
  add(text, cls) {
    const li = document.createElement('li');
    li.className = cls;
    li.textContent = text;
    $('transcript').appendChild(li);
    li.scrollIntoView({block: 'nearest'});
    return li;
  },
  reply(id) {
    if (!this.items.has(id)) this.items.set(id, this.add('', 'bot'));
    return this.items.get(id);
  },
  clear() { $('transcript').textContent = ''; this.items.clear(); },
};

// ------------------------------------------------------------------ socket

const socket = io({transports: ['websocket'], reconnectionAttempts: 5});
vita.socket = socket;

socket.on('connect', () => {
  stats.connected = true;
  stats.transport = socket.io.engine.transport.name;
  pill('conn', 'connected', 'on');
  banner('');
});
socket.on('disconnect', (reason) => {
  stats.connected = false;
  pill('conn', 'disconnected', 'bad');
  if (vita.running) stopCapture();
  if (reason === 'io server disconnect') banner('The server closed this session. Reload the page to start again.');
});
socket.on('connect_error', (err) => {
  stats.refused = err.message;
  pill('conn', 'refused', 'bad');
  banner('Cannot connect: ' + err.message);
});
socket.on('hello', (msg) => {
  vita.hello = msg;
  const el = $('notice');
  el.textContent = msg.notice || '';
  el.hidden = !msg.notice; // e.g. the default run: random weights, replies are noise
});
socket.on('error', (msg) => {
  stats.errors.push('server: ' + msg.code);
  status('Server: ' + msg.message);
  if (msg.fatal) banner(msg.message);
});

let lastTurnEnd = null; // performance.now() of the latest end of a user turn
let lastVadMs = null; // speech end (audio time) -> the VAD's end-of-turn decision, ms
socket.on('vad', (msg) => {
  stats.vad.push({...msg, at: now()});
  if (msg.type === 'speech_start') pill('listen', 'you are speaking', 'busy');
  else { pill('listen', 'listening', 'on'); lastTurnEnd = now(); lastVadMs = msg.at_ms - msg.end_ms; }
});
// Barge-in: the server pauses the reply at speech onset; the verdict then interrupts or resumes it.
socket.on('pause', (msg) => {
  stats.pauses.push({...msg, at: now()});
  player.pause();
  pill('speak', 'paused', 'off');
});
socket.on('resume', (msg) => {
  stats.resumes.push({...msg, at: now()});
  player.resume();
});
socket.on('judgement', (msg) => {
  stats.judgements.push({...msg, at: now()});
  const why = {state_token: 'not addressed to me', too_short: 'too short', echo: 'my own echo', error: 'failed'};
  transcript.add(`(ignored: ${why[msg.why] || msg.why})`, 'ignored');
});
socket.on('reply_start', (msg) => {
  stats.replies.push({...msg, at: now(), chunks: 0});
  vita.epoch = Math.max(vita.epoch, msg.epoch);
  if (msg.source === 'text') lastTurnEnd = now();
  transcript.reply(msg.reply_id);
});
socket.on('reply_text', (msg) => {
  if (msg.epoch < vita.epoch) return;
  transcript.reply(msg.reply_id).textContent += msg.text;
});
socket.on('reply_audio', (header, pcm) => {
  if (header.epoch < vita.epoch || !player.node) return; // stale: an interrupt already flushed this reply
  const r = stats.replies.find((x) => x.reply_id === header.reply_id);
  if (r) r.chunks++;
  player.node.port.postMessage({type: 'chunk', replyId: header.reply_id, pcm}, [pcm]);
});
function showTimeline(t, playedMs) {
  const fmt = (v) => (v === undefined || v === null ? '–' : String(Math.round(v)));
  const row = {vad: lastVadMs, judge: t.engine_judge, clause: t.engine_first_clause, sent: t.first_audio,
    played: playedMs};
  stats.timelines.push(row);
  $('t-vad').textContent = fmt(row.vad);
  $('t-judge').textContent = fmt(row.judge);
  $('t-clause').textContent = fmt(row.clause);
  $('t-sent').textContent = fmt(row.sent);
  $('t-played').textContent = fmt(row.played);
}
socket.on('reply_end', (msg) => {
  const t = msg.timings_ms || {};
  const r = stats.replies.find((x) => x.reply_id === msg.reply_id);
  showTimeline(t, r ? r.playedMs : undefined);
  const heard = stats.latencies.length ? `${stats.latencies[stats.latencies.length - 1]} ms heard` : 'not heard';
  if (t.first_audio !== undefined) {
    $('latency').textContent = `latency: end of turn → reply audio ${heard} (server sent it after ${Math.round(t.first_audio)} ms)`;
  }
});
socket.on('interrupt', (msg) => {
  vita.epoch = Math.max(vita.epoch, msg.epoch);
  stats.interrupts.push({...msg, at: now()});
  player.flush();
  if (msg.reply_id) transcript.reply(msg.reply_id).classList.add('cut');
});

function control(msg) {
  return new Promise((resolve) => socket.timeout(5000).emit('control', msg, (err, ack) => resolve(err ? null : ack)));
}

// ------------------------------------------------------------------ reply playback

const player = {
  ctx: null, node: null, reported: {},
  async init() {
    if (this.ctx) return;
    this.ctx = new AudioContext({sampleRate: 24000, latencyHint: 'interactive'});
    await this.ctx.audioWorklet.addModule('/static/player-worklet.js');
    this.node = new AudioWorkletNode(this.ctx, 'reply-player', {numberOfInputs: 0, outputChannelCount: [1]});
    this.node.connect(this.ctx.destination);
    this.node.port.onmessage = (e) => this.onMessage(e.data);
  },
  onMessage(m) {
    if (m.type === 'started') {
      pill('speak', 'speaking', 'busy');
      if (lastTurnEnd !== null) {
        const ms = Math.round(now() - lastTurnEnd);
        stats.latencies.push(ms);
        const r = stats.replies.find((x) => x.reply_id === m.replyId);
        if (r) r.playedMs = ms;
        $('t-played').textContent = String(ms);
        $('latency').textContent = `latency: ${ms} ms from end of turn to reply audio`;
        lastTurnEnd = null;
      }
      return;
    }
    if (m.type === 'flushed') stats.flushed.push({...m, at: now()});
    if (m.type !== 'played' && m.type !== 'paused') pill('speak', 'silent', 'off');
    if (m.replyId) {
      stats.played[m.replyId] = m.samples;
      this.report(m.replyId, m.samples, m.type !== 'played'); // paused/flushed/drained: at once
    }
  },
  report(replyId, samples, force) {
    // Tell the server what was actually heard (it trims the history to it); at most ~4 per second.
    const last = this.reported[replyId] || {at: 0, samples: -1};
    if (samples === last.samples || (!force && now() - last.at < 250)) return;
    this.reported[replyId] = {at: now(), samples};
    stats.playbackReports++;
    socket.emit('control', {type: 'playback', reply_id: replyId, samples});
  },
  flush() { if (this.node) this.node.port.postMessage({type: 'flush'}); },
  pause() { if (this.node) this.node.port.postMessage({type: 'pause'}); },
  resume() { if (this.node) this.node.port.postMessage({type: 'resume'}); },
};

// ------------------------------------------------------------------ capture

const capture = {stream: null, ctx: null, node: null, timer: null};

async function openMic() {
  const constraints = {
    audio: {channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true},
    video: {width: {ideal: 640}, height: {ideal: 480}, facingMode: 'user'},
  };
  try {
    return await navigator.mediaDevices.getUserMedia(constraints);
  } catch (err) {
    status('Camera unavailable (' + err.name + '); continuing with the microphone only.');
    return navigator.mediaDevices.getUserMedia({audio: constraints.audio});
  }
}

async function startCapture() {
  if (vita.running) return;
  $('start').disabled = true;
  try {
    await player.init(); // inside the click: browsers only allow audio after a user gesture
    if (player.ctx.state !== 'running') await player.ctx.resume();
    capture.stream = await openMic();
    let ctx;
    try { ctx = new AudioContext({sampleRate: 16000}); } catch { ctx = new AudioContext(); }
    capture.ctx = ctx;
    await ctx.audioWorklet.addModule('/static/mic-worklet.js');
    const node = new AudioWorkletNode(ctx, 'mic-capture', {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: {packetSamples: 320, targetRate: 16000},
    });
    node.port.onmessage = (e) => {
      if (!vita.running) return;
      if (stats.firstPacketAt === null) stats.firstPacketAt = now();
      stats.packetsSent++;
      stats.samplesSent += e.data.byteLength / 2;
      socket.emit('audio', e.data);
    };
    capture.node = node;
    const ack = await control({type: 'start'});
    if (!ack || !ack.ok) throw new Error('the server did not accept start');
    vita.running = true;
    ctx.createMediaStreamSource(capture.stream).connect(node);
    if (ctx.state !== 'running') await ctx.resume();
    startCamera();
    pill('listen', 'listening', 'on');
    $('stop').disabled = false;
  } catch (err) {
    stats.errors.push('start: ' + err);
    status('Could not start: ' + err.message);
    stopCapture();
  }
}

function startCamera() {
  const track = capture.stream.getVideoTracks()[0];
  if (!track) return;
  const video = $('preview');
  video.srcObject = capture.stream;
  video.play().catch(() => {});
  const canvas = document.createElement('canvas');
  const g = canvas.getContext('2d');
  const fps = (vita.hello && vita.hello.camera_fps) || 2;
  capture.timer = setInterval(() => {
    if (video.readyState < 2 || !vita.running) return;
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    g.drawImage(video, 0, 0);
    canvas.toBlob(async (blob) => {
      if (!blob || !vita.running) return;
      socket.emit('frame', await blob.arrayBuffer());
      stats.framesSent++;
    }, 'image/jpeg', 0.7);
  }, 1000 / fps);
}

function stopCapture() {
  const wasRunning = vita.running;
  vita.running = false;
  clearInterval(capture.timer);
  if (capture.stream) capture.stream.getTracks().forEach((t) => t.stop());
  if (capture.ctx) capture.ctx.close().catch(() => {});
  Object.assign(capture, {stream: null, ctx: null, node: null, timer: null});
  $('preview').srcObject = null;
  player.flush();
  if (wasRunning && socket.connected) control({type: 'stop'});
  pill('listen', 'mic off', 'off');
  $('start').disabled = false;
  $('stop').disabled = true;
}

$('start').addEventListener('click', startCapture);
$('stop').addEventListener('click', stopCapture);
$('clear').addEventListener('click', () => {
  player.flush();
  transcript.clear();
  control({type: 'reset'});
});
$('ask').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  await player.init();
  if (player.ctx.state !== 'running') await player.ctx.resume();
  transcript.add(text, 'user');
  $('text').value = '';
  control({type: 'text', text});
});
