// vita-duplex page: mic -> server (PCM16 16 kHz), camera -> server (JPEG), reply audio -> gapless player.
// Protocol: docs/protocol.md. window.vita exposes state for diagnostics and the browser tests.
// The page runs under a strict CSP (script-src/style-src 'self'): no inline script or style, no eval;
// styles change only through classes and the CSSOM.
'use strict';

const $ = (id) => document.getElementById(id);
const now = () => performance.now();
const params = new URLSearchParams(location.search);

const vita = window.vita = {
  stats: {
    connected: false, transport: null, refused: null, secure: window.isSecureContext,
    packetsSent: 0, samplesSent: 0, framesSent: 0, firstPacketAt: null,
    vad: [], replies: [], interrupts: [], flushed: [], played: {}, errors: [], latencies: [],
    playbackReports: 0, pauses: [], resumes: [], judgements: [], timelines: [],
    states: [], conn: [], waiting: [], disconnects: [], ready: [], reconnects: 0,
  },
  hello: null, // the current session's hello (null while connecting, waiting in line or disconnected)
  epoch: 0,
  running: false, // mic (and camera) streaming to the server
  conn: 'connecting',
  state: 'idle',
  announced: [], // what the live region said (tests: ignored utterances must not be announced)
};
const stats = vita.stats;
window.addEventListener('error', (e) => stats.errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => stats.errors.push(String(e.reason)));

// Preferences of this browser (device choices, theme, push-to-talk): localStorage, never sent anywhere.
const prefs = {
  get(key, fallback) {
    try { const v = localStorage.getItem('vita-' + key); return v === null ? fallback : JSON.parse(v); } catch { return fallback; }
  },
  set(key, value) { try { localStorage.setItem('vita-' + key, JSON.stringify(value)); } catch { /* storage off */ } },
};

// ------------------------------------------------------------------ small UI helpers

function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }
function announce(text) { // the polite live region: status changes and finished replies, nothing else
  vita.announced.push(text);
  if (vita.announced.length > 50) vita.announced.shift();
  const el = $('announce');
  el.textContent = '';
  setTimeout(() => { el.textContent = text; }, 50); // a changed node is what screen readers announce
}
function status(text) { setText('status', text); }
const banner = {
  action: null,
  show(text, kind = 'bad', action = null) { // action: {label, run}
    const el = $('banner');
    el.className = 'banner ' + kind;
    setText('banner-text', text);
    el.hidden = false;
    this.action = action;
    $('banner-action').hidden = !action;
    if (action) $('banner-action').textContent = action.label;
  },
  hide(kind) { // only a banner of this kind (undefined: any)
    const el = $('banner');
    if (kind && !el.classList.contains(kind)) return;
    el.hidden = true;
    this.action = null;
  },
};
$('banner-action').addEventListener('click', () => { const a = banner.action; banner.hide(); if (a) a.run(); });

// ------------------------------------------------------------------ theme and settings

function applyTheme() {
  const theme = prefs.get('theme', 'system');
  if (theme === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $('set-theme').value = theme;
  viz.colors = null; // re-read from the CSS on the next frame
}

const settings = {
  fpsChoices() {
    const max = (vita.hello && vita.hello.camera_fps) || 2;
    return [...new Set([0.5, 1, 2, max].filter((f) => f <= max))].sort((a, b) => a - b);
  },
  sizeChoices() {
    const max = (vita.hello && vita.hello.max_frame_side) || 640;
    return [320, 480, 640, 960].filter((s) => s <= max);
  },
  fps() { const c = this.fpsChoices(); const want = prefs.get('fps', c[c.length - 1]); return c.includes(want) ? want : c[c.length - 1]; },
  size() { const c = this.sizeChoices(); const want = prefs.get('size', 640); return c.includes(want) ? want : c[c.length - 1]; },
  fill() { // the choices the server allows (hello): frame rate up to camera_fps, frame size up to max_frame_side
    const fill = (id, values, current, label) => {
      const sel = $(id);
      sel.textContent = '';
      for (const v of values) {
        const o = document.createElement('option');
        o.value = String(v);
        o.textContent = label(v);
        o.selected = v === current;
        sel.appendChild(o);
      }
    };
    fill('set-fps', this.fpsChoices(), this.fps(), (v) => `${v} per second`);
    fill('set-res', this.sizeChoices(), this.size(), (v) => `${v} pixels wide at most`);
  },
};

$('set-theme').addEventListener('change', (e) => { prefs.set('theme', e.target.value); applyTheme(); });
$('set-fps').addEventListener('change', (e) => { prefs.set('fps', Number(e.target.value)); camera.restartTimer(); });
$('set-res').addEventListener('change', (e) => prefs.set('size', Number(e.target.value)));
$('set-ptt').addEventListener('change', (e) => { prefs.set('ptt', e.target.checked); ptt.apply(); });
$('set-aec').addEventListener('change', (e) => { prefs.set('aec', e.target.checked); if (vita.running) swapMedia(); });
$('set-mic').addEventListener('change', (e) => { prefs.set('mic', e.target.value); if (vita.running) swapMedia(); });
$('set-cam').addEventListener('change', (e) => { prefs.set('cam', e.target.value); if (vita.running) swapMedia(); });
$('settings-open').addEventListener('click', () => { devices.refresh(); settings.fill(); $('settings').showModal(); });
$('set-ptt').checked = prefs.get('ptt', false);
$('set-aec').checked = prefs.get('aec', true);

const devices = {
  async refresh() { // labels are only known once the user allowed a device
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    const list = await navigator.mediaDevices.enumerateDevices();
    const fill = (id, kind, pref, fallback) => {
      const sel = $(id);
      const want = prefs.get(pref, '');
      sel.textContent = '';
      const def = document.createElement('option');
      def.value = '';
      def.textContent = fallback;
      sel.appendChild(def);
      list.filter((d) => d.kind === kind && d.deviceId && d.deviceId !== 'default').forEach((d, i) => {
        const o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || `${kind === 'audioinput' ? 'Microphone' : 'Camera'} ${i + 1}`;
        sel.appendChild(o);
      });
      sel.value = [...sel.options].some((o) => o.value === want) ? want : '';
    };
    fill('set-mic', 'audioinput', 'mic', 'Default microphone');
    fill('set-cam', 'videoinput', 'cam', 'Default camera');
  },
};
if (navigator.mediaDevices) navigator.mediaDevices.addEventListener('devicechange', () => devices.refresh());

// ------------------------------------------------------------------ the transcript and the timeline

const convo = {
  voicePending: [], // spoken turns waiting for a verdict (oldest first): the server judges one at a time
  textPending: [], // typed turns waiting for their reply_start
  replies: new Map(), // reply_id -> {li, textEl, turn, n, text, ended}
  rows: new Map(), // reply_id -> timeline row (also pushed to stats.timelines)
  count: 0,
  lastLatency: null,
  entry(cls, who, text) {
    const li = document.createElement('li');
    li.className = 'turn ' + cls;
    const label = document.createElement('span');
    label.className = 'who';
    label.textContent = who;
    const body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    li.append(label, body);
    $('transcript').appendChild(li);
    this.follow();
    return {li, textEl: body};
  },
  following: true, // the reader is at the newest words; false once they scroll up to read older ones
  autoTop: 0, // where follow() last put the list: a scroll above it is the reader's
  follow() { // keep the newest words in view as entries arrive and replies grow, unless the reader scrolled up
    const list = $('transcript');
    if (!this.following) return;
    list.scrollTop = list.scrollHeight;
    this.autoTop = list.scrollTop;
  },
  mark(turn, text) { // a quiet note on a turn (e.g. not answered); the transcript is not a live region
    if (!turn || turn.li.querySelector('.mark')) return;
    const m = document.createElement('span');
    m.className = 'mark';
    m.textContent = text;
    turn.li.appendChild(m);
    this.follow();
  },
  divider(text) {
    const li = document.createElement('li');
    li.className = 'divider';
    li.textContent = text;
    $('transcript').appendChild(li);
    this.follow();
  },
  spoken(msg) {
    const secs = Math.max(0, (msg.end_ms - msg.start_ms) / 1000);
    const {li, textEl} = this.entry('user voice', 'You', '');
    const icon = document.createElement('span');
    icon.className = 'icon-mic'; // an SVG (emoji fonts are not everywhere)
    icon.setAttribute('aria-hidden', 'true');
    const dur = document.createElement('span');
    dur.textContent = `${secs.toFixed(1)} s`;
    const sr = document.createElement('span');
    sr.className = 'sr-only';
    sr.textContent = 'spoke for ';
    textEl.append(icon, sr, dur);
    const turn = {kind: 'voice', li, endAt: now(), vadMs: msg.at_ms - msg.end_ms, seconds: secs};
    if (this.voicePending.length >= 2) { // one is judged, one waits: the server keeps only the latest waiting
      this.mark(this.voicePending.pop(), 'not answered: you went on talking');
    }
    this.voicePending.push(turn);
    presenter.user(`spoke ${secs.toFixed(1)} s`);
    return turn;
  },
  typed(text) {
    const {li} = this.entry('user typed', 'You', text);
    const turn = {kind: 'text', li, endAt: now(), vadMs: null};
    this.textPending.push(turn);
    presenter.user(text);
    return turn;
  },
  judged(msg) {
    const why = {state_token: 'not addressed to me', too_short: 'too short', echo: 'my own voice', error: 'failed'};
    // echo is decided at the end of the utterance just reported; other verdicts come in order
    const turn = msg.why === 'echo' ? this.voicePending.pop() : this.voicePending.shift();
    this.mark(turn, `not answered: ${why[msg.why] || msg.why}`);
  },
  replyStart(msg) {
    const turn = (msg.source === 'text' ? this.textPending : this.voicePending).shift() || null;
    const n = ++this.count;
    const {li, textEl} = this.entry('bot pending', 'Assistant', '');
    li.dataset.reply = msg.reply_id;
    const r = {li, textEl, turn, n, text: '', ended: false};
    this.replies.set(msg.reply_id, r);
    const row = {reply_id: msg.reply_id, n, vad: turn ? turn.vadMs : null, judge: null, clause: null, sent: null,
      played: null};
    this.rows.set(msg.reply_id, row);
    timeline.add(row);
    presenter.reply('');
    this.trim();
    return r;
  },
  replyText(msg) {
    const r = this.replies.get(msg.reply_id);
    if (!r) return;
    r.text += msg.text;
    r.li.classList.remove('pending');
    r.textEl.textContent = r.text;
    this.follow();
    presenter.reply(r.text);
  },
  replyEnd(msg) {
    const r = this.replies.get(msg.reply_id);
    const t = msg.timings_ms || {};
    const row = this.rows.get(msg.reply_id);
    if (row) {
      Object.assign(row, {judge: t.engine_judge, clause: t.engine_first_clause, sent: t.first_audio});
      stats.timelines.push(row);
      timeline.update(row);
    }
    if (!r) return;
    r.ended = true;
    r.li.classList.remove('pending');
    if (!r.text) r.textEl.textContent = msg.reason === 'done' ? '(spoken reply, no text)' : '(no reply)';
    if (msg.reason && msg.reason !== 'done') this.mark({li: r.li}, `ended: ${msg.reason.replace(/_/g, ' ')}`);
    this.follow();
    if (r.text) announce('Assistant: ' + r.text);
  },
  interrupted(msg) {
    const r = msg.reply_id && this.replies.get(msg.reply_id);
    if (!r) return;
    r.li.classList.add('cut');
    r.li.classList.remove('pending');
    if (!r.text) r.textEl.textContent = '(nothing said yet)';
    this.mark({li: r.li}, 'interrupted');
  },
  played(replyId) { // first sample of a reply was heard: its latency, one wording everywhere
    const r = this.replies.get(replyId);
    const row = this.rows.get(replyId);
    if (!r || !r.turn) return;
    const ms = Math.round(now() - r.turn.endAt);
    stats.latencies.push(ms);
    const rep = stats.replies.find((x) => x.reply_id === replyId);
    if (rep) rep.playedMs = ms;
    if (row) { row.played = ms; timeline.update(row); }
    this.lastLatency = `Reply ${r.n}: ${ms} ms from the end of your turn to its first sound`;
    setText('latency', this.lastLatency);
    setText('p-latency', this.lastLatency);
  },
  trim() { // bounded memory in long sessions: the page keeps the last 200 entries
    const list = $('transcript');
    while (list.children.length > 200) list.firstElementChild.remove();
    if (this.replies.size > 200) this.replies.delete(this.replies.keys().next().value);
  },
  dropVoice(why) { // typed text, stop and reset make the server drop utterances still being judged
    for (const t of this.voicePending) this.mark(t, why);
    this.voicePending = [];
  },
  reset() { // a new session: pending turns will never be answered
    this.dropVoice('not answered: the connection dropped');
    for (const t of this.textPending) this.mark(t, 'not answered: the connection dropped');
    this.textPending = [];
  },
  clear() {
    $('transcript').textContent = '';
    $('timeline-rows').textContent = '';
    this.replies.clear();
    this.rows.clear();
    this.voicePending = [];
    this.textPending = [];
    this.following = true;
    this.autoTop = 0;
    presenter.user('');
    presenter.reply('');
  },
};

// Only the reader's own scrolling changes whether the transcript follows: replies growing in place fire no
// scroll event, and reaching the bottom again resumes following.
$('transcript').addEventListener('scroll', () => {
  const list = $('transcript');
  if (list.scrollHeight - list.scrollTop - list.clientHeight < 40) convo.following = true;
  else if (list.scrollTop < convo.autoTop - 1) convo.following = false;
});

const timeline = {
  stages: ['vad', 'judge', 'clause', 'sent', 'played'],
  add(row) {
    const tr = document.createElement('tr');
    tr.dataset.reply = row.reply_id;
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = `#${row.n}`;
    tr.appendChild(th);
    for (const s of this.stages) {
      const td = document.createElement('td');
      td.dataset.stage = s;
      tr.appendChild(td);
    }
    const body = $('timeline-rows');
    body.appendChild(tr);
    while (body.children.length > 8) body.firstElementChild.remove();
    this.update(row);
  },
  update(row) {
    const tr = $('timeline-rows').querySelector(`tr[data-reply="${CSS.escape(row.reply_id)}"]`);
    if (!tr) return;
    for (const s of this.stages) {
      const v = row[s];
      tr.querySelector(`td[data-stage="${s}"]`).textContent = v === undefined || v === null ? '–' : String(Math.round(v));
    }
  },
};
$('details-toggle').addEventListener('click', () => {
  const open = $('details').hidden;
  $('details').hidden = !open;
  $('details-toggle').setAttribute('aria-expanded', String(open));
  prefs.set('details', open);
});
if (prefs.get('details', false)) $('details-toggle').click();

// ------------------------------------------------------------------ the assistant's state, from real playback

const assistant = {
  userSpeaking: false,
  paused: false,
  interruptedAt: -1e9,
  thinking: false,
  audible: null, // reply the player renders right now
  current: null, // reply in flight (reply_start seen; no interrupt)
  started: new Set(), // replies whose first sample was played
  ended: new Set(), // replies whose reply_end arrived
  reset() {
    Object.assign(this, {userSpeaking: false, paused: false, interruptedAt: -1e9, thinking: false, audible: null,
      current: null});
  },
};
const STATES = {
  idle: 'Not started', listening: 'Listening', muted: 'Mic muted', ptt: 'Hold Space to talk',
  user: 'You are speaking', thinking: 'Thinking…', speaking: 'Speaking', paused: 'Paused — listening to you',
  interrupted: 'Interrupted', offline: 'Offline', waiting: 'Waiting in line',
};
const INTERRUPTED_MS = 1200;

function currentState() {
  const a = assistant;
  if (vita.conn === 'waiting') return 'waiting';
  if (vita.conn !== 'ready') return 'offline';
  if (a.paused) return 'paused';
  if (a.userSpeaking && vita.running) return 'user';
  if (now() - a.interruptedAt < INTERRUPTED_MS) return 'interrupted';
  // a reply that started playing is "speaking" until it ended and its last sample played, across gaps
  if (a.audible || (a.current && a.started.has(a.current) && !a.ended.has(a.current))) return 'speaking';
  if (a.thinking) return 'thinking';
  if (vita.running) return mic.muted ? 'muted' : ptt.on ? (ptt.held ? 'listening' : 'ptt') : 'listening';
  return 'idle';
}
const OFFLINE_TEXT = {connecting: 'Connecting…', reconnecting: 'Reconnecting…', retrying: 'Waiting to retry',
  closed: 'Disconnected'};
let renderedConn = null;
function renderState() {
  const s = currentState();
  if (s === vita.state && (s !== 'offline' || renderedConn === vita.conn)) return;
  renderedConn = vita.conn;
  if (s !== vita.state) stats.states.push({state: s, at: now()});
  vita.state = s;
  const text = s === 'offline' ? OFFLINE_TEXT[vita.conn] || STATES.offline : STATES[s];
  for (const [id, textId] of [['state', 'state-text'], ['p-state', 'p-state-text']]) {
    $(id).className = `state st-${s}${id === 'p-state' ? ' p-state' : ''}`;
    setText(textId, text);
  }
}

// ------------------------------------------------------------------ connection: reconnects, waiting room

// Access token (the operator's --access_token): opened as /#token=..., kept in sessionStorage for reloads of
// this tab, and dropped from the address bar so it is not bookmarked, shared or kept in history. A fragment
// never reaches the server; the token travels only in the Socket.IO connect packet.
const TOKEN_KEY = 'vita-access-token';
const token = {
  get() { try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; } },
  set(value) { try { sessionStorage.setItem(TOKEN_KEY, value); } catch { /* storage off: this load only */ } },
  fromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return;
    try { this.set(decodeURIComponent(m[1])); } catch { this.set(m[1]); } // a stray '%' must not stop the page
    history.replaceState(null, '', location.pathname + location.search);
  },
};
token.fromFragment();

// Socket.IO retries a lost connection by itself, forever (backoff 0.5 s doubling to 5 s). A connection the
// server refused (full, draining, engine down) or ended (drain) is retried here, with a countdown.
const socket = io({
  transports: ['websocket'],
  reconnection: true, reconnectionAttempts: Infinity, reconnectionDelay: 500, reconnectionDelayMax: 5000,
  randomizationFactor: 0.3,
  auth: (cb) => cb(token.get() ? {token: token.get()} : {}), // re-read on every (re)connect
});
vita.socket = socket;

const CONN_TEXT = {
  connecting: 'Connecting…', waiting: 'Waiting in line', ready: 'Connected', reconnecting: 'Reconnecting…',
  retrying: 'Retrying…', closed: 'Disconnected',
};
const conn = {
  everReady: false,
  retries: 0,
  timer: null,
  lastFatal: null, // code of the last fatal error (decides whether a server disconnect is retried)
  set(state, text, countdown = '') { // countdown: shown, not announced (the pill is a live region)
    const changed = vita.conn !== state;
    vita.conn = state;
    const el = $('conn');
    el.className = 'conn conn-' + state;
    const label = text || CONN_TEXT[state];
    if (el.firstChild === null || el.firstChild.textContent !== label) el.textContent = label;
    let tick = el.querySelector('.countdown');
    if (countdown && !tick) {
      tick = document.createElement('span');
      tick.className = 'countdown';
      tick.setAttribute('aria-hidden', 'true');
      el.appendChild(tick);
    }
    if (tick) {
      if (countdown) tick.textContent = countdown; else tick.remove();
    }
    if (changed) {
      stats.conn.push({state, at: now()});
      if (state !== 'waiting') $('queue').hidden = true;
    }
    controls.update();
    renderState();
  },
  retryIn(seconds, why) { // a countdown, then connect again
    clearInterval(this.timer);
    const until = now() + seconds * 1000;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - now()) / 1000));
      this.set('retrying', left ? `${why}: retrying` : 'Retrying…', left ? ` in ${left} s` : '');
      if (left === 0) { clearInterval(this.timer); this.timer = null; socket.connect(); }
    };
    this.timer = setInterval(tick, 1000);
    tick();
  },
  backoff() { this.retries++; return Math.min(30, 3 * 2 ** (this.retries - 1)) * (0.85 + 0.3 * Math.random()); },
  connectNow() { clearInterval(this.timer); this.timer = null; this.set('connecting'); socket.connect(); },
};

socket.on('connect', () => {
  stats.connected = true;
  stats.transport = socket.io.engine.transport.name;
  clearInterval(conn.timer);
  conn.timer = null;
  conn.lastFatal = null;
  // hello (admitted) or waiting (in line) follows, or came already: Socket.IO hands over events that
  // arrived with the connect packet before this handler runs
  if (!vita.hello && vita.conn !== 'waiting') conn.set('connecting', 'Joining…');
});
socket.on('hello', (msg) => {
  vita.hello = msg;
  vita.epoch = 0; // a new session counts epochs from 0 again
  assistant.started.clear();
  assistant.ended.clear();
  conn.retries = 0;
  banner.hide('conn-banner');
  const el = $('notice');
  const [head, ...rest] = (msg.notice || '').split(': '); // "Demo mode: the weights are random ..."
  setText('notice-summary', rest.length ? head : 'Notice');
  const body = rest.length ? rest.join(': ') : msg.notice || '';
  setText('notice-text', body.charAt(0).toUpperCase() + body.slice(1));
  el.hidden = !msg.notice; // e.g. the default run: random weights, replies are noise
  if (!conn.everReady && window.matchMedia('(min-width: 761px)').matches) el.open = true; // phones: one line
  stats.ready.push(now());
  if (conn.everReady) {
    stats.reconnects++;
    convo.divider('Reconnected: the assistant starts a new conversation');
    announce('Reconnected');
  } else {
    announce('Connected');
  }
  conn.everReady = true;
  settings.fill();
  conn.set('ready');
  if (capture.want) startCapture(); // it was running when the connection dropped: resume by itself
});
socket.on('waiting', (msg) => {
  if (vita.hello) return; // admitted already (a late update)
  stats.waiting.push({...msg, at: now()});
  const wait = msg.estimated_wait_s;
  setText('queue-place', `The server is busy. You are number ${msg.position} in line.`);
  setText('queue-wait', wait === null || wait === undefined ? ''
    : wait < 60 ? 'Expected wait: under a minute.' : `Expected wait: about ${Math.round(wait / 60)} min.`);
  $('queue').hidden = false;
  conn.set('waiting', `Waiting in line: #${msg.position}`);
});
socket.on('disconnect', (reason) => {
  stats.connected = false;
  stats.disconnects.push({reason, at: now()});
  const wasReady = vita.conn === 'ready';
  vita.hello = null;
  stopCapture({keepWant: true, tellServer: false});
  player.flush();
  assistant.reset();
  convo.reset();
  if (reason === 'io server disconnect') { // the server ended it: retried unless it was for inactivity
    if (conn.lastFatal === 'idle_timeout' || conn.lastFatal === 'queue_timeout') {
      capture.want = false;
      conn.set('closed');
      const idle = conn.lastFatal === 'idle_timeout';
      banner.show(idle ? 'The session was closed after a long time without activity.'
        : 'No conversation became free while you waited.', 'warn conn-banner',
      {label: idle ? 'Reconnect' : 'Join the line again', run: () => conn.connectNow()});
      return;
    }
    conn.retryIn(conn.backoff(), 'The server closed the session');
    return;
  }
  conn.set('reconnecting'); // Socket.IO reconnects by itself
  if (wasReady) {
    announce('Connection lost; reconnecting');
    banner.show('Connection lost. Reconnecting by itself; the conversation so far stays on this page'
      + (capture.want ? ', and the microphone comes back on once connected.' : '.'), 'warn conn-banner');
  }
});
socket.on('connect_error', (err) => {
  stats.refused = err.message;
  if (socket.active) { // the server cannot be reached: Socket.IO keeps trying
    conn.set(conn.everReady ? 'reconnecting' : 'connecting', conn.everReady ? 'Reconnecting…' : 'Cannot reach the server; retrying…');
    return;
  }
  const code = err.data && err.data.code;
  if (code === 'unauthorized') {
    conn.set('closed', 'Access token needed');
    banner.show('Cannot connect: ' + err.message, 'bad conn-banner', {label: 'Enter the token', run: askToken});
    askToken();
    return;
  }
  const delay = code === 'draining' ? Math.max(5, (err.data.seconds_left || 0) + 2) : conn.backoff();
  banner.show(`Cannot connect: ${err.message}. This page tries again by itself.`, 'warn conn-banner');
  conn.retryIn(delay, code === 'full' ? 'Server full' : 'Refused');
});
function askToken() {
  const given = window.prompt('This server needs an access token:');
  if (given) { token.set(given.trim()); conn.connectNow(); } // a refused connect is not retried by itself
}
socket.on('error', (msg) => {
  stats.errors.push('server: ' + msg.code);
  if (msg.fatal) conn.lastFatal = msg.code;
  if (msg.code === 'engine' && !msg.fatal) {
    assistant.thinking = false;
    renderState();
  }
  status('Server: ' + msg.message);
  if (msg.fatal && msg.code !== 'idle_timeout' && msg.code !== 'queue_timeout') banner.show(msg.message, 'bad conn-banner');
});
socket.on('server_draining', (msg) => {
  status(`The server is restarting (within ${Math.round(msg.seconds_left)} s); this page reconnects by itself.`);
});

socket.on('vad', (msg) => {
  stats.vad.push({...msg, at: now()});
  if (msg.type === 'speech_start') {
    assistant.userSpeaking = true;
  } else {
    assistant.userSpeaking = false;
    assistant.thinking = true;
    convo.spoken(msg);
  }
  renderState();
});
// Barge-in: the server pauses the reply at speech onset; the verdict then interrupts or resumes it.
socket.on('pause', (msg) => {
  stats.pauses.push({...msg, at: now()});
  player.pause();
  assistant.paused = true;
  renderState();
});
socket.on('resume', (msg) => {
  stats.resumes.push({...msg, at: now()});
  player.resume();
  assistant.paused = false;
  renderState();
});
socket.on('judgement', (msg) => {
  stats.judgements.push({...msg, at: now()});
  convo.judged(msg); // a quiet mark on that turn, not announced
  if (!convo.voicePending.length && !convo.textPending.length) assistant.thinking = false;
  renderState();
});
socket.on('reply_start', (msg) => {
  stats.replies.push({...msg, at: now(), chunks: 0, samples: 0});
  vita.epoch = Math.max(vita.epoch, msg.epoch);
  assistant.current = msg.reply_id;
  assistant.thinking = true; // until its first sample plays
  convo.replyStart(msg);
  renderState();
});
socket.on('reply_text', (msg) => {
  if (msg.epoch < vita.epoch) return;
  convo.replyText(msg);
});
socket.on('reply_audio', (header, pcm) => {
  if (header.epoch < vita.epoch || !player.node) return; // stale: an interrupt already flushed this reply
  const r = stats.replies.find((x) => x.reply_id === header.reply_id);
  if (r) { r.chunks++; r.samples += header.samples; }
  player.node.port.postMessage({type: 'chunk', replyId: header.reply_id, pcm}, [pcm]);
});
socket.on('reply_end', (msg) => {
  assistant.ended.add(msg.reply_id);
  if (!assistant.started.has(msg.reply_id) && assistant.current === msg.reply_id) assistant.thinking = false;
  convo.replyEnd(msg);
  renderState();
});
socket.on('interrupt', (msg) => {
  vita.epoch = Math.max(vita.epoch, msg.epoch);
  stats.interrupts.push({...msg, at: now()});
  player.flush();
  assistant.paused = false;
  assistant.current = null;
  assistant.audible = null;
  if (msg.reason === 'barge_in' || msg.reason === 'text') {
    assistant.interruptedAt = now();
    setTimeout(renderState, INTERRUPTED_MS + 20);
  }
  convo.interrupted(msg);
  renderState();
});

function control(msg) {
  if (!socket.connected) return Promise.resolve(null);
  return new Promise((resolve) => socket.timeout(5000).emit('control', msg, (err, ack) => resolve(err ? null : ack)));
}

// ------------------------------------------------------------------ reply playback

const player = {
  ctx: null, node: null, analyser: null, reported: {},
  async init() {
    if (this.ctx) return;
    this.ctx = new AudioContext({sampleRate: 24000, latencyHint: 'interactive'});
    await this.ctx.audioWorklet.addModule('/static/player-worklet.js');
    this.node = new AudioWorkletNode(this.ctx, 'reply-player', {numberOfInputs: 0, outputChannelCount: [1]});
    this.analyser = this.ctx.createAnalyser(); // the assistant visualiser reads what is really played
    this.analyser.fftSize = 256;
    this.node.connect(this.analyser);
    this.analyser.connect(this.ctx.destination);
    this.node.port.onmessage = (e) => this.onMessage(e.data);
    viz.start();
  },
  onMessage(m) {
    if (m.type === 'started' || m.type === 'playing') {
      assistant.audible = m.replyId;
      if (m.type === 'started') {
        assistant.started.add(m.replyId);
        if (assistant.current === m.replyId) assistant.thinking = false;
        convo.played(m.replyId);
      }
      renderState();
      return;
    }
    if (m.type === 'flushed') stats.flushed.push({...m, at: now()});
    if (m.type === 'drained' || m.type === 'flushed') {
      assistant.audible = null; // a gap in a reply still in flight stays "speaking" (currentState)
      renderState();
    }
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
    if (socket.connected) socket.emit('control', {type: 'playback', reply_id: replyId, samples});
  },
  flush() { if (this.node) this.node.port.postMessage({type: 'flush'}); },
  pause() { if (this.node) this.node.port.postMessage({type: 'pause'}); },
  resume() { if (this.node) this.node.port.postMessage({type: 'resume'}); },
};

// ------------------------------------------------------------------ level meter and visualiser

const viz = {
  running: false, colors: null, buf: null, last: 0,
  start() {
    if (this.running) return;
    this.running = true;
    requestAnimationFrame((t) => this.frame(t));
  },
  frame(t) {
    requestAnimationFrame((t2) => this.frame(t2));
    if (document.hidden || t - this.last < 33) return; // ~30 frames per second is plenty
    this.last = t;
    this.drawMic();
    this.drawReply();
  },
  drawMic() {
    let level = 0;
    if (capture.analyser && vita.running) {
      const a = capture.analyser;
      if (!this.buf || this.buf.length !== a.fftSize) this.buf = new Float32Array(a.fftSize);
      a.getFloatTimeDomainData(this.buf);
      let sum = 0;
      for (const x of this.buf) sum += x * x;
      const db = 20 * Math.log10(Math.sqrt(sum / this.buf.length) + 1e-9);
      level = Math.max(0, Math.min(1, (db + 60) / 50)); // -60 dBFS .. -10 dBFS
      stats.micPeak = Math.max(stats.micPeak || 0, level);
    }
    $('mic-level').style.transform = `scaleX(${level.toFixed(3)})`;
    const pct = String(Math.round(level * 100));
    if ($('mic-meter').getAttribute('aria-valuenow') !== pct) $('mic-meter').setAttribute('aria-valuenow', pct);
  },
  drawReply() {
    const c = $('viz');
    const g = c.getContext('2d');
    if (!this.colors) {
      const cs = getComputedStyle(document.documentElement);
      this.colors = {bar: cs.getPropertyValue('--viz').trim() || '#888', idle: cs.getPropertyValue('--viz-idle').trim() || '#555'};
    }
    g.clearRect(0, 0, c.width, c.height);
    const bars = 24;
    const w = c.width / bars;
    const data = new Uint8Array(player.analyser ? player.analyser.frequencyBinCount : bars);
    if (player.analyser) player.analyser.getByteFrequencyData(data);
    const live = vita.state === 'speaking';
    g.fillStyle = live ? this.colors.bar : this.colors.idle;
    for (let i = 0; i < bars; i++) {
      const v = live ? data[Math.floor(i * data.length / bars / 2)] / 255 : 0;
      if (v > (stats.vizPeak || 0)) stats.vizPeak = v;
      const h = Math.max(3, v * c.height);
      g.fillRect(i * w + 1, (c.height - h) / 2, w - 2, h);
    }
  },
};

// ------------------------------------------------------------------ capture: mic, camera, push-to-talk

const capture = {stream: null, ctx: null, node: null, source: null, analyser: null, starting: false, want: false};

const mic = {
  muted: false,
  track() { return capture.stream && capture.stream.getAudioTracks()[0]; },
  // Muted (or push-to-talk released), the track sends silence: the server's VAD then ends the turn normally.
  apply() {
    const t = this.track();
    if (t) t.enabled = !this.muted && (!ptt.on || ptt.held);
    $('mute').setAttribute('aria-pressed', String(this.muted));
    setText('mute', this.muted ? 'Unmute mic' : 'Mute mic');
    renderState();
  },
  toggle() { this.muted = !this.muted; this.apply(); announce(this.muted ? 'Microphone muted' : 'Microphone on'); },
};
$('mute').addEventListener('click', () => mic.toggle());

const ptt = {
  on: prefs.get('ptt', false),
  held: false,
  apply() {
    this.on = prefs.get('ptt', false);
    document.body.classList.toggle('ptt-mode', this.on);
    $('ptt').hidden = !this.on;
    mic.apply();
    controls.update();
  },
  press(down) {
    if (!this.on || this.held === down) return;
    this.held = down;
    $('ptt').classList.toggle('held', down);
    mic.apply();
  },
};
const typing = (el) => el && (el.tagName === 'INPUT' && el.type !== 'checkbox' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT');
document.addEventListener('keydown', (e) => {
  if (e.code === 'Space' && ptt.on && vita.running && !typing(e.target) && !$('settings').open) {
    e.preventDefault(); // no scrolling, no click on a focused button
    if (!e.repeat) ptt.press(true);
  } else if (e.key === 'Escape' && presenter.on && !document.fullscreenElement) {
    presenter.toggle(false);
  }
});
document.addEventListener('keyup', (e) => { if (e.code === 'Space' && ptt.on) { e.preventDefault(); ptt.press(false); } });
window.addEventListener('blur', () => ptt.press(false));
$('ptt').addEventListener('pointerdown', (e) => { e.preventDefault(); ptt.press(true); });
for (const ev of ['pointerup', 'pointerleave', 'pointercancel']) $('ptt').addEventListener(ev, () => ptt.press(false));

const DEVICE_WORD = {microphone: 'microphone', camera: 'camera'};
function permissionHelp(device, err) {
  const word = DEVICE_WORD[device];
  const fix = `To fix it: click the camera or lock icon at the left of the address bar, set ${word[0].toUpperCase() + word.slice(1)} to “Allow”, then press Start again. On a phone: the browser menu → Site settings → ${word[0].toUpperCase() + word.slice(1)} → Allow.`;
  switch (err.name) {
    case 'NotAllowedError': case 'SecurityError':
      return `The ${word} is blocked for this page. ${fix}`;
    case 'NotFoundError': case 'OverconstrainedError':
      return `No ${word} was found. Plug one in or pick another in Settings, then press Start again.`;
    case 'NotReadableError': case 'AbortError':
      return `The ${word} is busy or blocked by the system. Close other apps that use it (or allow this browser in the system's privacy settings), then press Start again.`;
    default:
      return `The ${word} could not be opened (${err.name}: ${err.message}).`;
  }
}
function tagged(err, device) { err.device = device; return err; }

async function openMedia(withCamera) {
  const micId = prefs.get('mic', ''), camId = prefs.get('cam', '');
  const audio = {channelCount: 1, echoCancellation: prefs.get('aec', true), noiseSuppression: true, autoGainControl: true};
  if (micId) audio.deviceId = {ideal: micId};
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw tagged(new DOMException('this page is not on HTTPS, so the browser offers no microphone', 'SecurityError'), 'microphone');
  }
  if (!withCamera) {
    try { return await navigator.mediaDevices.getUserMedia({audio}); } catch (err) { throw tagged(err, 'microphone'); }
  }
  const side = settings.size();
  const video = {width: {ideal: side}, height: {ideal: Math.round(side * 3 / 4)}, facingMode: 'user'};
  if (camId) video.deviceId = {ideal: camId};
  try {
    return await navigator.mediaDevices.getUserMedia({audio, video});
  } catch (err) {
    let stream; // which device failed? the microphone alone tells
    try { stream = await navigator.mediaDevices.getUserMedia({audio}); } catch (err2) { throw tagged(err2, 'microphone'); }
    banner.show(permissionHelp('camera', err) + ' The conversation goes on with the microphone only.', 'warn media-banner');
    stats.errors.push('camera: ' + err.name);
    return stream;
  }
}

async function startCapture() {
  if (vita.running || capture.starting || vita.conn !== 'ready') return;
  capture.starting = true;
  capture.want = true;
  controls.update();
  let accepted = false;
  try {
    await player.init(); // inside the click: browsers only allow audio after a user gesture
    if (player.ctx.state !== 'running') await player.ctx.resume();
    // the server first: devices open only once it accepted (a full or broken server never sees the camera)
    const ack = await control({type: 'start'});
    if (!ack || !ack.ok) throw new Error('the server did not accept start');
    accepted = true;
    banner.hide('media-banner');
    capture.stream = await openMedia(camera.wanted);
    let ctx;
    try { ctx = new AudioContext({sampleRate: 16000}); } catch { ctx = new AudioContext(); }
    capture.ctx = ctx;
    await ctx.audioWorklet.addModule('/static/mic-worklet.js');
    const node = new AudioWorkletNode(ctx, 'mic-capture', {
      numberOfInputs: 1, numberOfOutputs: 0, processorOptions: {packetSamples: 320, targetRate: 16000},
    });
    node.port.onmessage = (e) => {
      if (!vita.running || !socket.connected) return;
      if (stats.firstPacketAt === null) stats.firstPacketAt = now();
      stats.packetsSent++;
      stats.samplesSent += e.data.byteLength / 2;
      socket.emit('audio', e.data);
    };
    capture.node = node;
    capture.analyser = ctx.createAnalyser();
    capture.analyser.fftSize = 512;
    if (vita.conn !== 'ready') throw new Error('the connection dropped');
    vita.running = true;
    connectSource();
    if (ctx.state !== 'running') await ctx.resume();
    camera.attach();
    mic.apply();
    document.body.classList.add('started');
    viz.start();
    devices.refresh();
    announce('Listening');
  } catch (err) {
    stats.errors.push('start: ' + (err.name || '') + ' ' + err.message);
    if (err.device) {
      banner.show(permissionHelp(err.device, err) + ' You can still type questions below.', 'bad media-banner');
      capture.want = false;
    } else {
      status('Could not start: ' + err.message);
    }
    stopCapture({keepWant: !err.device, tellServer: false});
    if (accepted) control({type: 'stop'});
  } finally {
    capture.starting = false;
    controls.update();
    renderState();
  }
}

function connectSource() {
  if (capture.source) capture.source.disconnect();
  capture.source = capture.ctx.createMediaStreamSource(capture.stream);
  capture.source.connect(capture.node);
  capture.source.connect(capture.analyser);
}

async function swapMedia() { // another device or setting while running: new tracks, same session
  try {
    const stream = await openMedia(camera.wanted);
    if (!vita.running) { stream.getTracks().forEach((t) => t.stop()); return; }
    capture.stream.getTracks().forEach((t) => t.stop());
    capture.stream = stream;
    connectSource();
    camera.attach();
    mic.apply();
  } catch (err) {
    banner.show(permissionHelp(err.device || 'microphone', err), 'bad media-banner');
  }
}

function stopCapture({keepWant = false, tellServer = true} = {}) {
  const wasRunning = vita.running;
  vita.running = false;
  if (!keepWant) capture.want = false;
  camera.detach();
  if (capture.source) capture.source.disconnect();
  if (capture.stream) capture.stream.getTracks().forEach((t) => t.stop());
  if (capture.ctx) capture.ctx.close().catch(() => {});
  Object.assign(capture, {stream: null, ctx: null, node: null, source: null, analyser: null});
  player.flush();
  assistant.userSpeaking = false;
  ptt.press(false);
  if (wasRunning && tellServer) {
    control({type: 'stop'});
    convo.dropVoice('not answered: you pressed Stop');
    assistant.thinking = convo.textPending.length > 0;
  }
  controls.update();
  renderState();
}

const camera = {
  wanted: prefs.get('camera', true),
  timer: null,
  canvas: document.createElement('canvas'),
  track() { return capture.stream && capture.stream.getVideoTracks()[0]; },
  attach() { // preview (mirrored by CSS) and frames at the chosen rate (not mirrored: the model sees the room)
    const track = this.track();
    const video = $('preview');
    this.stopTimer();
    if (!track) { video.srcObject = null; this.label(false); return; }
    video.srcObject = new MediaStream([track]);
    video.play().catch(() => {});
    this.label(true);
    this.restartTimer();
  },
  restartTimer() {
    this.stopTimer();
    if (!this.track()) return;
    const video = $('preview');
    const g = this.canvas.getContext('2d');
    this.timer = setInterval(() => {
      if (video.readyState < 2 || !vita.running || !socket.connected) return;
      const side = settings.size();
      const scale = Math.min(1, side / Math.max(video.videoWidth, video.videoHeight));
      this.canvas.width = Math.round(video.videoWidth * scale);
      this.canvas.height = Math.round(video.videoHeight * scale);
      g.drawImage(video, 0, 0, this.canvas.width, this.canvas.height);
      this.canvas.toBlob(async (blob) => {
        if (!blob || !vita.running) return;
        socket.emit('frame', await blob.arrayBuffer());
        stats.framesSent++;
      }, 'image/jpeg', 0.7);
    }, 1000 / settings.fps());
  },
  stopTimer() { clearInterval(this.timer); this.timer = null; },
  detach() { this.stopTimer(); $('preview').srcObject = null; this.label(false); },
  label(on) {
    $('cam').classList.toggle('cam-off', !on);
    setText('cam-caption', on ? 'You (mirrored)' : !this.wanted ? 'Camera turned off'
      : vita.running ? 'No camera' : 'Your camera appears after Start');
  },
  async toggle() {
    this.wanted = !this.wanted;
    prefs.set('camera', this.wanted);
    $('camera').setAttribute('aria-pressed', String(this.wanted));
    setText('camera', this.wanted ? 'Camera on' : 'Camera off');
    if (!vita.running) return;
    if (!this.wanted) { // off means off: the track stops (the camera light goes out), no frames are sent
      const t = this.track();
      if (t) { t.stop(); capture.stream.removeTrack(t); }
      this.attach();
      return;
    }
    try {
      const camId = prefs.get('cam', '');
      const side = settings.size();
      const video = {width: {ideal: side}, height: {ideal: Math.round(side * 3 / 4)}, facingMode: 'user'};
      if (camId) video.deviceId = {ideal: camId};
      const s = await navigator.mediaDevices.getUserMedia({video});
      capture.stream.addTrack(s.getVideoTracks()[0]);
      this.attach();
    } catch (err) {
      banner.show(permissionHelp('camera', err), 'warn media-banner');
    }
  },
};
$('camera').setAttribute('aria-pressed', String(camera.wanted));
setText('camera', camera.wanted ? 'Camera on' : 'Camera off');
$('camera').addEventListener('click', () => camera.toggle());

// ------------------------------------------------------------------ buttons

const controls = {
  update() {
    const ready = vita.conn === 'ready';
    $('start').disabled = !ready || vita.running || capture.starting;
    $('stop').disabled = !vita.running;
    $('send').disabled = !ready;
    $('mute').disabled = !vita.running;
    $('camera').disabled = false;
    $('ptt').disabled = !vita.running;
    $('p-start').disabled = !ready || capture.starting;
    setText('p-start', vita.running ? 'Stop' : 'Start');
    document.body.classList.toggle('running', vita.running);
  },
};

$('start').addEventListener('click', () => startCapture());
$('stop').addEventListener('click', () => stopCapture());
$('p-start').addEventListener('click', () => (vita.running ? stopCapture() : startCapture()));
$('clear').addEventListener('click', () => {
  player.flush();
  convo.clear();
  assistant.thinking = false;
  renderState();
  control({type: 'reset'});
});
$('ask').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text || vita.conn !== 'ready') return;
  await player.init();
  if (player.ctx.state !== 'running') await player.ctx.resume();
  convo.dropVoice('not answered: you typed a question');
  const turn = convo.typed(text);
  $('text').value = '';
  assistant.thinking = true;
  renderState();
  const ack = await control({type: 'text', text});
  if (!ack || !ack.ok) {
    convo.textPending = convo.textPending.filter((t) => t !== turn);
    convo.mark(turn, 'not sent: ' + ((ack && ack.message) || 'no answer from the server'));
    if (!convo.voicePending.length && !convo.textPending.length) assistant.thinking = false;
    renderState();
  }
});

// ------------------------------------------------------------------ presenter mode

const presenter = {
  on: false,
  user(text) { setText('p-user', text ? 'You: ' + text : ''); },
  reply(text) { setText('p-reply', text || '…'); },
  toggle(on) {
    this.on = on;
    document.body.classList.toggle('presenting', on);
    $('presenter').hidden = !on;
    $('present').setAttribute('aria-pressed', String(on));
    const url = new URL(location.href);
    if (on) url.searchParams.set('present', '1'); else url.searchParams.delete('present');
    history.replaceState(null, '', url.pathname + url.search);
    if (on) this.join();
    else if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  },
  async join() { // the QR code: this page's address on the LAN (from /join when opened as localhost)
    let url = null, hint = null;
    const loopback = /^(localhost|127\.|\[::1\]|::1)/.test(location.hostname) || location.hostname.endsWith('.localhost');
    if (!loopback) {
      url = location.origin + '/';
    } else {
      try {
        const headers = token.get() ? {Authorization: 'Bearer ' + token.get()} : {};
        const info = await (await fetch('/join', {headers})).json();
        url = (info.urls && info.urls[0]) || null;
        hint = info.hint;
      } catch { hint = 'The address for phones is unknown.'; }
    }
    if (url && token.get()) url += '#token=' + encodeURIComponent(token.get()); // the audience needs it too
    vita.joinUrl = url;
    setText('p-url', url ? url.replace(/#token=.*/, '') : hint || '');
    drawQr($('p-qr'), url);
  },
};
function drawQr(canvas, text) {
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  canvas.hidden = !text;
  if (!text || typeof qrcode !== 'function') return;
  const qr = qrcode(0, 'M'); // vendored qrcode-generator: type 0 = smallest that fits
  qr.addData(text);
  qr.make();
  const n = qr.getModuleCount();
  const cell = Math.floor(canvas.width / (n + 8)); // 4 modules of quiet zone each side
  const off = Math.floor((canvas.width - cell * n) / 2);
  g.fillStyle = '#ffffff'; // dark on light whatever the theme: what scanners expect
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = '#000000';
  for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) if (qr.isDark(r, c)) g.fillRect(off + c * cell, off + r * cell, cell, cell);
}
$('present').addEventListener('click', () => presenter.toggle(!presenter.on));
$('p-exit').addEventListener('click', () => presenter.toggle(false));
$('p-full').addEventListener('click', () => {
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  else document.documentElement.requestFullscreen().catch((err) => status('Full screen refused: ' + err.message));
});

// ------------------------------------------------------------------ start-up

applyTheme();
if (window.matchMedia) window.matchMedia('(prefers-color-scheme: light)').addEventListener('change', () => { viz.colors = null; });
ptt.apply();
controls.update();
renderState();
viz.start();
if (params.has('present')) presenter.toggle(true);
