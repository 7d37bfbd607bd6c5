// Microphone recording to a WAV file (16-bit PCM, mono), which the service decodes.
// Browsers record compressed formats (WebM/Opus) the service does not take, so the raw
// samples are collected with an AudioWorklet (recorder-worklet.js) and written as WAV here.

export const MAX_RECORD_SECONDS = 30;

/** Start recording; resolves to an object whose `stop()` resolves to a WAV Blob. */
export async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const ctx = new AudioContext();
  try {
    await ctx.audioWorklet.addModule("/playground/recorder-worklet.js");
  } catch (err) {
    stream.getTracks().forEach((t) => t.stop());
    await ctx.close();
    throw err;
  }
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm-recorder");
  const chunks = [];
  let samples = 0;
  const limit = MAX_RECORD_SECONDS * ctx.sampleRate;
  node.port.onmessage = (event) => {
    if (samples < limit) {
      chunks.push(event.data);
      samples += event.data.length;
    }
  };
  source.connect(node);
  node.connect(ctx.destination); // keeps the node running; it outputs silence
  return {
    async stop() {
      source.disconnect();
      node.disconnect();
      stream.getTracks().forEach((t) => t.stop());
      const rate = ctx.sampleRate;
      await ctx.close();
      return encodeWav(chunks, rate);
    },
  };
}

/** Float32 chunks in [-1, 1] → a 16-bit PCM mono WAV Blob. */
export function encodeWav(chunks, rate) {
  const count = chunks.reduce((n, c) => n + c.length, 0);
  const buffer = new ArrayBuffer(44 + 2 * count);
  const view = new DataView(buffer);
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * count, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // size of the fmt chunk
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, 2 * count, true);
  let at = 44;
  for (const chunk of chunks) {
    for (const x of chunk) {
      const s = Math.max(-1, Math.min(1, x));
      view.setInt16(at, s < 0 ? s * 0x8000 : s * 0x7fff, true);
      at += 2;
    }
  }
  return new Blob([buffer], { type: "audio/wav" });
}
