// Plays the reply's audio as it arrives: a queue of Float32Array pieces at the context's rate.
// Messages in: {type: "push", samples, turn}, {type: "flush"} (barge-in: silence at once).
// Messages out: {type: "started", turn, frame} when a turn's first sample is output,
// {type: "played", samples, queued} every ~50 ms while playing, {type: "drained", turn} when the
// queue runs empty after playing.
class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; this.offset = 0; this.turn = null; this.started = new Set();
    this.played = 0; this.sinceReport = 0; this.playing = false;
    this.port.onmessage = (event) => {
      const m = event.data;
      if (m.type === "push") this.queue.push({samples: m.samples, turn: m.turn});
      else if (m.type === "flush") { this.queue = []; this.offset = 0; }
    };
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const head = this.queue[0];
      if (!this.started.has(head.turn)) {
        this.started.add(head.turn);
        this.port.postMessage({type: "started", turn: head.turn, frame: currentFrame + i});
      }
      this.turn = head.turn;
      const n = Math.min(out.length - i, head.samples.length - this.offset);
      out.set(head.samples.subarray(this.offset, this.offset + n), i);
      i += n; this.offset += n; this.played += n; this.sinceReport += n;
      if (this.offset === head.samples.length) { this.queue.shift(); this.offset = 0; }
    }
    out.fill(0, i);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (i > 0) this.playing = true;
    if (this.sinceReport >= sampleRate / 20 || (this.playing && !this.queue.length)) {
      const queued = this.queue.reduce((n, piece) => n + piece.samples.length, 0) - this.offset;
      this.port.postMessage({type: "played", samples: this.played, queued});
      this.sinceReport = 0;
    }
    if (this.playing && !this.queue.length) { this.playing = false; this.port.postMessage({type: "drained", turn: this.turn}); }
    return true;
  }
}

registerProcessor("headway-player", Player);
