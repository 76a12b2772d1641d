// AudioWorklet: captures the microphone at the context's rate and posts 16 kHz float32 blocks.
// Resampling: an anti-aliasing average over each output sample's input span, then linear
// interpolation at the output instants (a ratio of 1 passes samples through untouched).
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / 16000;   // input samples per output sample
    this.position = 0;                 // next output instant, in input samples from buffer start
    this.buffer = new Float32Array(0);
    this.out = [];
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const joined = new Float32Array(this.buffer.length + channel.length);
    joined.set(this.buffer); joined.set(channel, this.buffer.length);
    const ratio = this.ratio;
    const half = Math.max(0, Math.floor(ratio / 2));
    while (this.position + 1 + half < joined.length) {
      const i = Math.floor(this.position), frac = this.position - i;
      let value;
      if (half === 0) {
        value = joined[i] * (1 - frac) + joined[i + 1] * frac;
      } else {
        let sum = 0, count = 0;
        for (let k = Math.max(0, i - half); k <= i + half; k++) { sum += joined[k]; count++; }
        value = sum / count;
      }
      this.out.push(value);
      this.position += ratio;
    }
    const keep = Math.max(0, Math.floor(this.position) - half);
    this.buffer = joined.slice(keep);
    this.position -= keep;
    if (this.out.length >= 1600) {     // 100 ms at 16 kHz
      this.port.postMessage(Float32Array.from(this.out));
      this.out = [];
    }
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);
