// The demo page: microphone -> AudioWorklet (16 kHz) -> websocket -> partial and final text.
const statusLine = document.getElementById("status");
const finals = document.getElementById("finals");
const partial = document.getElementById("partial");
const startButton = document.getElementById("start");
const stopButton = document.getElementById("stop");
let socket = null, context = null, source = null, node = null, stream = null;

function show(text) { statusLine.textContent = text; }

function toPcm16(block) {
  const pcm = new Int16Array(block.length);
  for (let i = 0; i < block.length; i++) {
    const s = Math.max(-1, Math.min(1, block[i]));
    pcm[i] = s < 0 ? s * 32768 : s * 32767;
  }
  return pcm.buffer;
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.type === "partial") {
    partial.textContent = message.text;
  } else if (message.type === "final") {
    const line = document.createElement("p");
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = `${message.start.toFixed(1)}-${message.end.toFixed(1)} s`;
    line.appendChild(time);
    line.appendChild(document.createTextNode(message.text));
    line.className = "final";
    finals.appendChild(line);
    partial.textContent = "";
  } else if (message.type === "error") {
    show("server error: " + message.message);
  } else if (message.type === "ready") {
    show("listening");
  }
}

async function start() {
  startButton.disabled = true;
  try {
    stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1, echoCancellation: true}});
    context = new AudioContext();
    await context.audioWorklet.addModule("worklet.js");
    source = context.createMediaStreamSource(stream);
    node = new AudioWorkletNode(context, "pcm-capture");
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onmessage = onMessage;
    socket.onclose = () => { show("disconnected"); cleanUp(); };
    await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = reject; });
    socket.send(JSON.stringify({type: "start", sample_rate: 16000}));
    node.port.onmessage = (event) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(toPcm16(event.data));
    };
    source.connect(node);
    stopButton.disabled = false;
    show(`connecting (microphone at ${context.sampleRate} Hz, sent at 16000 Hz)`);
  } catch (error) {
    show("cannot start: " + error);
    cleanUp();
  }
}

function cleanUp() {
  if (source) source.disconnect();
  if (stream) stream.getTracks().forEach((track) => track.stop());
  if (context) context.close();
  source = node = stream = context = null;
  startButton.disabled = false;
  stopButton.disabled = true;
}

function stop() {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: "end"}));
  cleanUp();
}

startButton.onclick = start;
stopButton.onclick = stop;
if (new URLSearchParams(location.search).get("autostart") === "1") start();
