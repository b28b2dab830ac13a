// The microphone's samples, cut into frames of `frame` samples (processorOptions) and posted
// to the page as Float32Arrays, with each frame's RMS level. Runs on the audio thread.
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frame = (options.processorOptions && options.processorOptions.frame) || 960;
    this.buffer = new Float32Array(this.frame);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    let offset = 0;
    while (offset < input.length) {
      const n = Math.min(input.length - offset, this.frame - this.filled);
      this.buffer.set(input.subarray(offset, offset + n), this.filled);
      this.filled += n; offset += n;
      if (this.filled === this.frame) {
        let sum = 0;
        for (let i = 0; i < this.frame; i++) sum += this.buffer[i] * this.buffer[i];
        const samples = this.buffer;
        this.port.postMessage({samples, rms: Math.sqrt(sum / this.frame), time: currentTime}, [samples.buffer]);
        this.buffer = new Float32Array(this.frame);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("headway-capture", Capture);
