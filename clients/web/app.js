// Headway's live demo: talk to the table robot (or type), watch it move, see every latency.
//
// One turn: the microphone's PCM streams to /v1/asr; each recognised word goes on at once to
// /v1/chat as a piece of a prompt that is still arriving (prompt_delta), so the LM prefills
// while the person speaks; the recogniser's end_of_turn asks it for its last words (flush),
// then prompt_end. The reply's tokens are shown as they come and their spoken part streams to
// /v1/tts, whose audio plays as it arrives. The reply's goal sets the robot's goal. A word
// recognised while a reply is generated or spoken is a barge-in: playback stops, chat and tts
// get cancel, and that word begins the next turn. The text box takes the same path without
// a microphone.
//
// Everything the page measures is in window.headway.metrics (the browser tests read it).

import {Table, PolicyLoop, drawTable, drawActions} from "./robot.js";

const $ = (id) => document.getElementById(id);
const wsUrl = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
const now = () => performance.now();
const round = (x) => (x === null || x === undefined ? null : Math.round(x));

// Earlier turns sent as the chat's history ("the other one"); the embedded LM was trained on
// dialogues of up to three turns.
const HISTORY_TURNS = 2;
const MAX_TOKENS = 96;
// The LM may start answering on a guess when the recogniser hears the end of the turn, while
// the page still waits for the flushed last words (prompt_pause; docs/chat-protocol.md).
const EARLY_ANSWER = true;
const VOICE_RMS = 0.01; // a capture frame louder than this (-40 dBFS) holds speech
const FLUSH_WAIT_MS = 400; // longest wait for the recogniser's flush before prompt_end anyway
// The recogniser's end of turn: a pause this long after speech (its VAD; docs/protocol.md /v1/asr).
const END_OF_TURN_MS = Number(new URLSearchParams(location.search).get("eot") || 500);
// A shorter pause already asks for the last words (flush: the stream goes on after it) and
// lets the LM start on a guess (prompt_pause), so that at end_of_turn only prompt_end is left.
const EARLY_FLUSH_MS = 240;
const VAD_SPEECH = 0.5, VAD_SILENCE = 0.35; // the recogniser's VAD hysteresis

const H = (window.headway = {
  metrics: {turns: [], robot: null, audio: {played_samples: 0, pushed_samples: 0, frames: 0}, asr: {frames_sent: 0, words: 0}},
  events: [], info: null, table: null, loop: null,
  log(kind, detail = {}) { H.events.push({t: round(now()), kind, ...detail}); if (H.events.length > 500) H.events.shift(); },
});

// -- a websocket speaking JSON text frames, binary for PCM ---------------------------------------

class Channel {
  constructor(path, hello, handlers) {
    this.ws = new WebSocket(wsUrl(path));
    this.ws.binaryType = "arraybuffer";
    this.queue = [JSON.stringify(hello)];
    this.open = false; this.closed = false;
    this.ws.onopen = () => { this.open = true; for (const frame of this.queue.splice(0)) this.ws.send(frame); };
    this.ws.onmessage = (event) => {
      if (typeof event.data === "string") (handlers.message || (() => {}))(JSON.parse(event.data));
      else (handlers.binary || (() => {}))(event.data);
    };
    this.ws.onclose = (event) => { this.closed = true; (handlers.close || (() => {}))(event); };
    this.ws.onerror = () => H.log("ws_error", {path});
  }

  send(message) { this.sendFrame(JSON.stringify(message)); }

  sendFrame(frame) {
    if (this.closed) return;
    if (this.open) this.ws.send(frame); else this.queue.push(frame);
  }

  close() { if (!this.closed) { this.closed = true; try { this.ws.close(); } catch (e) { /* closing */ } } }
}

// -- the reply's spoken part out of a streamed JSON object ---------------------------------------

// The LM answers {"reply": "...", "goal": ...}; the reply string is spoken while the rest still
// streams. feed(text) returns the reply characters that the new text completes. A reply that
// is not a JSON object is spoken whole.
export class ReplyExtractor {
  constructor() { this.raw = ""; this.pos = 0; this.mode = null; this.done = false; this.out = ""; }

  feed(text) {
    this.raw += text;
    let emitted = "";
    if (this.mode === null) {
      const first = this.raw.trimStart()[0];
      if (first === undefined) return "";
      this.mode = first === "{" ? "seek" : "plain";
    }
    if (this.mode === "plain") { emitted = this.raw.slice(this.pos); this.pos = this.raw.length; this.out += emitted; return emitted; }
    if (this.mode === "seek") {
      const m = /"reply"\s*:\s*"/.exec(this.raw);
      if (!m) return "";
      this.mode = "string"; this.pos = m.index + m[0].length;
    }
    while (this.mode === "string" && this.pos < this.raw.length) {
      const c = this.raw[this.pos];
      if (c === "\\") {
        if (this.pos + 1 >= this.raw.length) break;
        const e = this.raw[this.pos + 1];
        if (e === "u") {
          if (this.pos + 6 > this.raw.length) break;
          emitted += String.fromCharCode(parseInt(this.raw.slice(this.pos + 2, this.pos + 6), 16)); this.pos += 6; continue;
        }
        emitted += {n: "\n", t: "\t", r: "", b: "", f: ""}[e] ?? e; this.pos += 2; continue;
      }
      if (c === '"') { this.mode = "after"; this.done = true; this.pos++; break; }
      emitted += c; this.pos++;
    }
    this.out += emitted;
    return emitted;
  }
}

// -- audio: one context for the microphone and the player ----------------------------------------

const audio = {ctx: null, player: null, capture: null, stream: null};

async function ensureAudio() {
  if (audio.ctx) return audio.ctx;
  const ctx = new AudioContext({latencyHint: "interactive"});
  audio.ctx = ctx;
  audio.createdAt = now();
  await ctx.audioWorklet.addModule("/ui/capture-worklet.js");
  await ctx.audioWorklet.addModule("/ui/player-worklet.js");
  const player = new AudioWorkletNode(ctx, "headway-player", {numberOfInputs: 0, outputChannelCount: [1]});
  player.connect(ctx.destination);
  player.port.onmessage = (event) => onPlayer(event.data);
  audio.player = player;
  if (ctx.state !== "running") await ctx.resume().catch(() => {});
  H.metrics.audio.sample_rate = ctx.sampleRate;
  return ctx;
}

// performance.now() of an audio-context time: when that sample is heard (or was captured).
function contextToPerf(t) {
  const ctx = audio.ctx;
  const stamp = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  if (stamp && stamp.performanceTime > 0) return stamp.performanceTime + (t - stamp.contextTime) * 1000;
  return audio.createdAt + t * 1000;
}

function onPlayer(m) {
  if (m.type === "played") { H.metrics.audio.played_samples = m.samples; H.metrics.audio.queued = m.queued; }
  else if (m.type === "started") {
    const turn = turns.find((x) => x.id === m.turn);
    if (turn && !turn.t.firstAudio) {
      turn.t.firstAudio = contextToPerf(m.frame / audio.ctx.sampleRate);
      H.log("first_audio", {turn: turn.id});
      updateMeters(turn);
    }
  } else if (m.type === "drained") {
    const turn = turns.find((x) => x.id === m.turn);
    if (turn && turn.phase === "speaking" && turn.ttsDone) setPhase(turn, "done");
  }
}

// -- the conversation ----------------------------------------------------------------------------

const turns = [];
let current = null; // the turn being listened to or answered
let asr = null; // {channel, rate, sent, frames: [[samplesEnd, ctxTime]], lastVoiced, flushAt}

function setPhase(turn, phase) { turn.phase = phase; H.log("phase", {turn: turn.id, phase}); render(); }

function answering(turn) { return turn && ["answering", "speaking"].includes(turn.phase); }

function newTurn(source) {
  if (answering(current)) bargeIn(current);
  const turn = {id: turns.length, source, words: [], text: "", phase: "listening", reply: "", spoken: "", t: {start: now()},
    extractor: new ReplyExtractor(), ttsPending: "", goal: undefined};
  turns.push(turn);
  current = turn;
  H.metrics.turns.push({id: turn.id, source});
  if (H.info.chat) {
    const history = HISTORY_TURNS ? H.history.slice(-2 * HISTORY_TURNS) : [];
    turn.chat = new Channel("/v1/chat", {type: "hello", context: H.info.tableContext ? H.table.contextMap() : H.table.describe(), history, max_tokens: MAX_TOKENS, early_answer: EARLY_ANSWER}, {
      message: (m) => onChat(turn, m),
      close: () => { if (turn.phase === "answering") setPhase(turn, "done"); },
    });
  }
  render();
  return turn;
}

function addText(turn, piece) {
  turn.text += piece;
  if (turn.chat) turn.chat.send({type: "prompt_delta", text: piece});
}

function promptEnd(turn) {
  if (turn.phase !== "listening" && turn.phase !== "flushing") return;
  clearTimeout(turn.flushTimer);
  turn.t.promptEnd = now();
  if (!turn.text.trim()) { setPhase(turn, "done"); turn.chat && turn.chat.close(); return; }
  setPhase(turn, "answering");
  if (turn.chat) turn.chat.send({type: "prompt_end"});
  else { turn.reply = "(no language model is served: /v1/chat is missing)"; setPhase(turn, "done"); }
  if (H.info.tts && audio.ctx && turn.chat && !turn.tts) openTts(turn);
  H.log("prompt_end", {turn: turn.id, text: turn.text});
}

function bargeIn(turn) {
  H.log("barge_in", {turn: turn.id});
  turn.bargedIn = true;
  if (turn.chat) { turn.chat.send({type: "cancel"}); turn.chat.close(); }
  if (turn.tts) { turn.tts.send({type: "cancel"}); turn.tts.close(); }
  if (audio.player) audio.player.port.postMessage({type: "flush"});
  setPhase(turn, "cancelled");
}

function onChat(turn, m) {
  if (turn.phase === "cancelled") return;
  if (m.type === "token") {
    if (!turn.t.firstToken) { turn.t.firstToken = now(); H.log("first_token", {turn: turn.id}); }
    turn.raw = (turn.raw || "") + m.text;
    const spoken = turn.extractor.feed(m.text);
    if (spoken) { turn.reply += spoken; speak(turn, spoken); }
    render();
  } else if (m.type === "done") {
    turn.done = m;
    turn.t.chatDone = now();
    const output = m.output || null;
    if (output && typeof output.reply === "string" && !turn.reply) turn.reply = output.reply;
    if (!output && !turn.reply) turn.reply = m.text;
    turn.goal = output ? output.goal ?? null : null;
    if (turn.goal) {
      const ok = H.setGoal(turn.goal);
      H.log("goal", {turn: turn.id, goal: turn.goal, ok});
    }
    if (m.finish_reason !== "cancelled") H.history.push({role: "user", content: turn.text}, {role: "assistant", content: m.text});
    speak(turn, "", true);
    turn.chat.close();
    setPhase(turn, H.info.tts && !turn.ttsDone ? "speaking" : "done");
    updateMeters(turn);
  } else if (m.type === "error") {
    H.log("chat_error", {turn: turn.id, code: m.code, message: m.message});
    turn.error = m.message;
    render();
  }
}

// -- speech out ----------------------------------------------------------------------------------

function openTts(turn) {
  const rate = audio.ctx.sampleRate;
  turn.tts = new Channel("/v1/tts", {type: "hello", sample_rate: rate, format: "pcm_f32le"}, {
    message: (m) => {
      if (m.type === "ready") turn.ttsReady = m;
      else if (m.type === "word") { turn.spokenWords = (turn.spokenWords || 0) + 1; render(); }
      else if (m.type === "done") { turn.ttsDone = true; turn.ttsFirstAudioMs = m.first_audio_ms; updateMeters(turn); if (turn.phase === "speaking" && !turn.t.firstAudioReceived) setPhase(turn, "done"); }
      else if (m.type === "error") H.log("tts_error", {turn: turn.id, code: m.code, message: m.message});
    },
    binary: (data) => {
      if (turn.phase === "cancelled") return;
      const format = (turn.ttsReady && (turn.ttsReady.format || turn.ttsReady.encoding)) || "pcm_s16le";
      let samples;
      if (/f32|float/.test(format)) samples = new Float32Array(data);
      else { const ints = new Int16Array(data); samples = new Float32Array(ints.length); for (let i = 0; i < ints.length; i++) samples[i] = ints[i] / 32768; }
      if (!turn.t.firstAudioReceived) turn.t.firstAudioReceived = now();
      H.metrics.audio.frames++; H.metrics.audio.pushed_samples += samples.length;
      audio.player.port.postMessage({type: "push", samples, turn: turn.id}, [samples.buffer]);
    },
    close: () => { turn.ttsDone = true; },
  });
  speak(turn, "", !!turn.replyEnded);
}

// Complete words go to the synthesiser as they are known; the rest at the reply's end.
function speak(turn, text, end = false) {
  turn.ttsPending += text;
  if (end) turn.replyEnded = true;
  if (!turn.tts) return; // openTts sends what has gathered
  const cut = end ? turn.ttsPending.length : turn.ttsPending.lastIndexOf(" ") + 1;
  if (cut > 0) {
    const piece = turn.ttsPending.slice(0, cut);
    turn.ttsPending = turn.ttsPending.slice(cut);
    if (piece.trim()) {
      if (!turn.t.firstText) turn.t.firstText = now();
      turn.tts.send({type: "text", text: piece});
    }
  }
  if (end) turn.tts.send({type: "end"});
}

// -- speech in -----------------------------------------------------------------------------------

async function startMic() {
  const ctx = await ensureAudio();
  const stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false}});
  audio.stream = stream;
  const source = ctx.createMediaStreamSource(stream);
  const frame = Math.round(ctx.sampleRate * 0.02); // 20 ms frames
  const capture = new AudioWorkletNode(ctx, "headway-capture", {processorOptions: {frame}, numberOfOutputs: 0});
  source.connect(capture);
  audio.capture = capture; audio.source = source;
  asr = {rate: ctx.sampleRate, sent: 0, frames: [], lastVoiced: null, endOfTurnAt: 0,
    speaking: false, silentFrames: 0, flushPending: false, flushedSinceSpeech: true};
  asr.channel = openAsrChannel(ctx.sampleRate);
  capture.port.onmessage = (event) => {
    if (!asr) return;
    const {samples, rms, time} = event.data;
    asr.sent += samples.length;
    asr.frames.push([asr.sent, time]);
    if (asr.frames.length > 3000) asr.frames.shift();
    // Speech: louder than -40 dBFS and than four times the quietest frame of the last 2 s
    // (a room's noise floor), so that a noisy microphone does not read as speech throughout.
    asr.levels = (asr.levels || []).concat(rms).slice(-100);
    if (rms > Math.max(VOICE_RMS, 4 * Math.min(...asr.levels))) asr.lastVoiced = time;
    H.metrics.asr.frames_sent++;
    H.metrics.asr.level = rms;
    asr.channel.sendFrame(samples.buffer);
  };
  $("mic").classList.add("on");
  $("mic").textContent = "stop microphone";
  H.log("mic_on", {rate: ctx.sampleRate});
}

// A server that drains (1001) or a replica lost behind Ray's ingress (1012) asks the client
// to come back: the microphone stays on and a new recognition session opens (the words in
// flight are lost). Any other close ends the microphone.
const ASR_RECONNECT_CODES = new Set([1001, 1012]);

function openAsrChannel(rate) {
  return new Channel("/v1/asr", {type: "hello", sample_rate: rate, format: "f32le", end_of_turn_ms: END_OF_TURN_MS}, {
    message: onAsr,
    close: (event) => {
      H.log("asr_closed", {code: event.code, reason: event.reason});
      if (!asr) return;
      if (!ASR_RECONNECT_CODES.has(event.code)) { stopMic(); return; }
      const session = asr;
      setTimeout(() => { if (asr === session) asr.channel = openAsrChannel(rate); }, 250);
    },
  });
}

function stopMic() {
  if (!asr) return;
  const channel = asr.channel;
  asr = null;
  channel.close();
  if (audio.capture) { audio.source.disconnect(); audio.capture.disconnect(); }
  if (audio.stream) for (const track of audio.stream.getTracks()) track.stop();
  $("mic").classList.remove("on");
  $("mic").textContent = "microphone";
}

function requestFlush() {
  asr.flushPending = true; asr.flushedSinceSpeech = true; asr.speaking = false;
  asr.channel.send({type: "flush"});
  H.log("flush", {});
}

// Audio-context time of a stream time (seconds since the first sample sent).
function streamToContext(seconds) {
  const n = seconds * asr.rate;
  for (const [end, time] of asr.frames) if (end >= n) return time - (end - n) / asr.rate;
  return null;
}

function onAsr(m) {
  if (m.type === "word") {
    H.metrics.asr.words++;
    const text = (m.text || "").trim();
    if (!text) return;
    const start = m.start ?? m.start_s ?? 0;
    let turn = current;
    if (!turn || !["listening", "flushing"].includes(turn.phase)) {
      // A word from before the last end of turn belongs to the turn that already ended.
      if (turn && start < asr.endOfTurnAt) { H.log("late_word", {text}); return; }
      turn = newTurn("mic");
    }
    turn.words.push({text, start, end: undefined, at: now()});
    turn.t.lastWord = now();
    addText(turn, (turn.words.length > 1 ? " " : "") + text);
    render();
  } else if (m.type === "word_end") {
    // The word was sent when recognised; its end comes later (the next word, or a pause).
    for (const turn of [current, ...turns.slice(-2)]) {
      const word = turn && turn.words ? turn.words.find((w) => w.start === m.start && w.end === undefined) : null;
      if (word) { word.end = m.end; break; }
    }
  } else if (m.type === "end_of_turn") {
    const turn = current;
    asr.endOfTurnAt = m.at ?? asr.sent / asr.rate;
    H.log("end_of_turn", {at: m.at});
    if (!turn || turn.phase !== "listening" || !turn.words.length) return;
    turn.t.endOfTurn = now();
    turn.t.speechEnd = asr.lastVoiced !== null ? contextToPerf(asr.lastVoiced) : null;
    const last = turn.words[turn.words.length - 1];
    const lastEnd = last.end !== undefined ? streamToContext(last.end) : null;
    turn.t.lastWordEnd = lastEnd !== null ? contextToPerf(lastEnd) : null;
    if (H.info.tts && audio.ctx) openTts(turn); // its handshake overlaps the first token
    if (!asr.flushPending && asr.flushedSinceSpeech) { promptEnd(turn); return; }
    if (!asr.flushPending) requestFlush();
    setPhase(turn, "flushing"); // prompt_end once the flush is answered
    turn.flushTimer = setTimeout(() => promptEnd(turn), FLUSH_WAIT_MS);
  } else if (m.type === "flushed") {
    asr.flushPending = false;
    const turn = current;
    H.log("flushed", {});
    if (turn && turn.phase === "flushing") promptEnd(turn);
    else if (turn && turn.phase === "listening" && turn.words.length && turn.chat && EARLY_ANSWER) turn.chat.send({type: "prompt_pause"});
  } else if (m.type === "step") {
    H.metrics.asr.step = m;
    // The early flush: a pause of EARLY_FLUSH_MS after speech asks for the last words now.
    if (m.vad >= VAD_SPEECH) { asr.speaking = true; asr.silentFrames = 0; asr.flushedSinceSpeech = false; }
    else if (m.vad < VAD_SILENCE && asr.speaking) {
      asr.silentFrames++;
      if (asr.silentFrames * 80 >= EARLY_FLUSH_MS && !asr.flushedSinceSpeech && !asr.flushPending) requestFlush();
    }
  } else if (m.type === "ready") {
    H.metrics.asr.ready = m;
    H.log("asr_ready", {});
  } else if (m.type === "error") {
    H.log("asr_error", {code: m.code, message: m.message});
    $("status").textContent = `speech recognition: ${m.message}`;
  }
}

// -- meters --------------------------------------------------------------------------------------

function updateMeters(turn) {
  const t = turn.t, record = H.metrics.turns[turn.id];
  const span = (a, b) => (a && b ? round(b - a) : null);
  Object.assign(record, {
    text: turn.text, reply: turn.reply, goal: turn.goal, finish_reason: turn.done ? turn.done.finish_reason : null,
    speech_end_to_last_word_ms: span(t.speechEnd, t.lastWord),
    speech_end_to_end_of_turn_ms: span(t.speechEnd, t.endOfTurn),
    speech_end_to_prompt_end_ms: span(t.speechEnd, t.promptEnd),
    ttft_ms: turn.done ? round(turn.done.ttft_ms) : null,
    prompt_end_to_first_token_ms: span(t.promptEnd, t.firstToken),
    time_to_first_audio_ms: span(t.firstText, t.firstAudio),
    tts_first_audio_ms: turn.ttsFirstAudioMs ?? null, // the server's: first words in -> first audio out
    prompt_end_to_first_audio_ms: span(t.promptEnd, t.firstAudio),
    speech_end_to_first_audio_ms: span(t.speechEnd, t.firstAudio),
    last_word_end_to_first_audio_ms: span(t.lastWordEnd, t.firstAudio),
    prefilled_before_end: turn.done ? turn.done.prefilled_before_end : null,
    prompt_tokens: turn.done ? turn.done.prompt_tokens : null,
  });
  render();
}

// -- drawing the page ----------------------------------------------------------------------------

const fmt = (x, unit = " ms") => (x === null || x === undefined ? "–" : `${x}${unit}`);

function render() {
  const turn = current;
  if (turn) {
    $("transcript").textContent = turn.text || (turn.phase === "listening" ? "…" : "");
    $("reply").textContent = turn.reply + (turn.error ? ` [${turn.error}]` : "");
    $("phase").textContent = turn.phase;
  }
  // The earlier turns, newest first.
  $("log").innerHTML = turns.filter((x) => x !== turn && x.text && !H.metrics.turns[x.id].dropped).slice(-4).reverse()
    .map((x) => `<div><span class="label">you</span> ${escapeHtml(x.text)}</div>` +
      `<div class="reply"><span class="label">robot</span> ${escapeHtml(x.reply || "")}${x.phase === "cancelled" ? " <i>(interrupted)</i>" : ""}</div>`).join("");
  const rows = H.metrics.turns.filter((r) => !r.dropped).slice(-6).reverse().map((r) =>
    `<tr><td>${r.source}</td><td>${escapeHtml(r.text || "")}</td><td>${fmt(r.speech_end_to_last_word_ms)}</td>` +
    `<td>${fmt(r.ttft_ms)}</td><td>${fmt(r.time_to_first_audio_ms)}</td><td><b>${fmt(r.source === "mic" ? r.speech_end_to_first_audio_ms : r.prompt_end_to_first_audio_ms)}</b></td></tr>`);
  $("turns").innerHTML = rows.join("");
}

function escapeHtml(s) { return s.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }

function renderRobot() {
  drawTable($("table"), H.table, H.loop);
  drawActions($("actions"), H.loop);
  if (H.loop) {
    const s = (H.metrics.robot = H.loop.summary());
    $("robot-meters").innerHTML =
      `<tr><td>measured d</td><td>${fmt(s.d_last, " ticks")} (p50 ${fmt(s.d_p50, "")})</td></tr>` +
      `<tr><td>underruns</td><td>${s.underruns}</td></tr>` +
      `<tr><td>batch size</td><td>${fmt(s.batch_size, "")}</td></tr>` +
      `<tr><td>execution horizon s</td><td>${fmt(s.s_last, " ticks")}</td></tr>` +
      `<tr><td>round trip p50</td><td>${s.rtt_ms_p50 === null ? "–" : s.rtt_ms_p50.toFixed(1) + " ms"}</td></tr>` +
      `<tr><td>reaction to the last goal</td><td>${fmt(s.reaction_ms)}</td></tr>` +
      `<tr><td>seam jerk</td><td>${s.seam_jerk === null ? "–" : s.seam_jerk.toFixed(3)}</td></tr>` +
      `<tr><td>chunks</td><td>${s.chunks}</td></tr>`;
    H.metrics.robot.gripper = [...H.table.p];
    H.metrics.robot.target = [...H.table.target];
    H.metrics.robot.distance = H.table.distanceToTarget();
  }
  $("goal").textContent = H.table.goal ? JSON.stringify(H.table.goal) : "none";
  requestAnimationFrame(renderRobot);
}

// -- start ---------------------------------------------------------------------------------------

async function main() {
  H.info = await (await fetch("/ui/info.json")).json();
  const endpoints = new Set(H.info.endpoints);
  H.info.chat = endpoints.has("/v1/chat");
  H.info.asr = endpoints.has("/v1/asr");
  H.info.tts = endpoints.has("/v1/tts");
  H.info.tableContext = H.info.models.some((m) => m.endpoints.includes("/v1/chat") && m.table_context);
  const policies = H.info.models.filter((m) => m.endpoints.includes("/v1/policy"));
  const policy = policies.find((m) => m.task === "table" || m.name === "table") || null;
  H.history = [];
  H.table = new Table(Number(new URLSearchParams(location.search).get("seed") || 1));
  const missing = [!H.info.asr && "speech recognition (/v1/asr)", !H.info.chat && "language model (/v1/chat)",
    !H.info.tts && "speech synthesis (/v1/tts)", !policy && "table policy (/v1/policy)"].filter(Boolean);
  $("status").textContent = missing.length ? `not served here: ${missing.join(", ")}` : "all models served";
  $("mic").disabled = !H.info.asr;
  if (policy) {
    H.loop = new PolicyLoop(H.table, {url: wsUrl("/v1/policy"), model: policy.name, hz: 50, strategy: "rtc",
      onEvent: (e) => {
        H.log("policy_" + e.type, e.message ? {code: e.message.code} : {});
        if (e.type === "unsupported") { $("strategy").value = "rtc"; $("status").textContent = `robot: ${e.message.message}`; }
      }});
    H.loop.start();
  }
  $("strategy").onchange = () => {
    const [strategy, future] = $("strategy").value.split("+");
    H.loop && H.loop.configure({strategy, futureState: future === "future"});
    H.log("strategy", {value: $("strategy").value});
  };
  $("inject").onchange = () => { H.loop && H.loop.configure({injectMs: Number($("inject").value)}); H.log("inject", {ms: $("inject").value}); };
  $("mic").onclick = () => (asr ? stopMic() : startMic().catch((e) => { H.log("mic_error", {message: String(e)}); $("status").textContent = `microphone: ${e}`; }));
  // Typing streams too: each keystroke that extends the text is a prompt_delta, as each
  // recognised word is; an edit elsewhere drops that prompt (cancel) and starts it afresh.
  let typing = null;
  const typed = () => {
    const value = $("text").value;
    if (typing && !value.startsWith(typing.sent)) {
      if (typing.chat) { typing.chat.send({type: "cancel"}); typing.chat.close(); }
      typing.phase = "cancelled"; H.metrics.turns[typing.id].dropped = true; typing = null;
    }
    if (!value.trim()) return;
    if (!typing) { typing = newTurn("text"); typing.sent = ""; }
    const piece = value.slice(typing.sent.length);
    if (piece) { addText(typing, piece); typing.sent = value; }
  };
  $("text").oninput = typed;
  $("text").onfocus = () => ensureAudio().catch(() => {}); // ready before Enter (resumed by it)
  $("say").onsubmit = async (event) => {
    event.preventDefault();
    typed();
    if (!typing || !$("text").value.trim()) return;
    const turn = typing;
    typing = null;
    $("text").value = "";
    turn.t.speechEnd = now(); // typed: the person is done when they press Enter
    promptEnd(turn);
    if (audio.ctx) audio.ctx.resume().catch(() => {});
    else await ensureAudio().catch(() => {});
    if (H.info.tts && audio.ctx && !turn.tts && ["answering", "speaking"].includes(turn.phase)) openTts(turn);
  };
  $("new-table").onclick = () => { H.table.reset(); if (H.loop) H.loop.trail = []; H.log("new_table"); };
  // A goal as the chat's would set it (for tests and tours).
  H.setGoal = (goal) => { const ok = H.table.setGoal(goal); if (ok && H.loop) H.loop.goalChanged(); return ok; };
  // A table with that object on it (for tests and tours): the next seed that has one.
  H.tableWith = (color, shape) => {
    do H.table.reset(); while (!H.table.objects.some((o) => o.color === color && o.shape === shape));
    if (H.loop) H.loop.trail = [];
    return H.table.seed;
  };
  requestAnimationFrame(renderRobot);
  H.startMic = startMic; H.stopMic = stopMic;
  H.ready = true;
  H.log("page_ready", {endpoints: H.info.endpoints});
}

main().catch((e) => { $("status").textContent = `failed to start: ${e}`; H.log("page_error", {message: String(e)}); });
