// Gatehouse console: the little script the pages need. Live list of pending approvals
// (polling), countdowns, and a small asciicast v2 player. Everything it shows is either
// HTML the server escaped or text set with textContent.
"use strict";

function countdowns() {
  const now = Date.now();
  for (const t of document.querySelectorAll("time.countdown[data-expires]")) {
    const left = Math.floor((Number(t.dataset.expires) - now) / 1000);
    if (left <= 0) { t.textContent = "expired"; continue; }
    const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    t.textContent = h > 0 ? `${h}h ${m}m` : `${m}m ${String(s).padStart(2, "0")}s`;
  }
}

// Replace the list only when its version (ids and vote counts) changes, so a reason
// being typed is not lost.
async function poll(box) {
  try {
    const response = await fetch(box.dataset.poll, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) { location.reload(); return; }
    if (!response.ok) return;
    const html = await response.text();
    const current = document.getElementById(box.dataset.target);
    const next = new DOMParser().parseFromString(html, "text/html").getElementById(box.dataset.target);
    if (next && current && next.dataset.version !== current.dataset.version) {
      current.replaceWith(document.importNode(next, true));
      countdowns();
    }
  } catch (_) { /* offline for a moment: try again next tick */ }
}

// A terminal good enough for shell recordings: printable text, CR, LF, backspace, tab,
// cursor movement and erase sequences; colours and other sequences are dropped.
class Screen {
  // A client without a terminal (ssh -tt from a script) reports a 0x0 or 1x1 window;
  // wrapping at one column would make the text unreadable, so tiny sizes mean 80x24.
  constructor(cols, rows) {
    this.cols = cols >= 20 ? cols : 80;
    this.rows = rows >= 2 ? rows : 24;
    this.reset();
  }
  reset() { this.lines = [[]]; this.row = 0; this.col = 0; this.state = "text"; this.param = ""; }
  line() { while (this.lines.length <= this.row) this.lines.push([]); return this.lines[this.row]; }
  newline() { this.row += 1; this.line(); }
  put(ch) {
    if (this.col >= this.cols) { this.col = 0; this.newline(); }
    const l = this.line();
    while (l.length < this.col) l.push(" ");
    l[this.col] = ch; this.col += 1;
  }
  csi(final, param) {
    const n = Math.max(1, parseInt(param, 10) || 1);
    const top = Math.max(0, this.lines.length - this.rows);
    switch (final) {
      case "A": this.row = Math.max(top, this.row - n); break;
      case "B": this.row += n; this.line(); break;
      case "C": this.col = Math.min(this.cols - 1, this.col + n); break;
      case "D": this.col = Math.max(0, this.col - n); break;
      case "G": this.col = Math.min(this.cols - 1, n - 1); break;
      case "H": case "f": {
        const [r, c] = param.split(";").map((v) => Math.max(1, parseInt(v, 10) || 1));
        this.row = top + (r || 1) - 1; this.col = (c || 1) - 1; this.line(); break;
      }
      case "K": {
        const l = this.line(), mode = parseInt(param, 10) || 0;
        if (mode === 0) l.length = Math.min(l.length, this.col);
        else if (mode === 1) for (let i = 0; i <= this.col && i < l.length; i++) l[i] = " ";
        else l.length = 0;
        break;
      }
      case "J": if (param === "2" || param === "3") { this.lines = [[]]; this.row = 0; this.col = 0; } break;
      default: break;
    }
  }
  write(text) {
    for (const ch of text) {
      const c = ch.codePointAt(0);
      if (this.state === "esc") {
        if (ch === "[") { this.state = "csi"; this.param = ""; }
        else if (ch === "]") { this.state = "osc"; }
        else { this.state = "text"; }
        continue;
      }
      if (this.state === "csi") {
        if (c >= 0x40 && c <= 0x7e) { this.csi(ch, this.param.replace(/^[?>=]/, "")); this.state = "text"; }
        else this.param += ch;
        continue;
      }
      if (this.state === "osc") {
        if (c === 7) this.state = "text";
        else if (c === 0x1b) this.state = "esc";
        continue;
      }
      if (c === 0x1b) this.state = "esc";
      else if (ch === "\r") this.col = 0;
      else if (ch === "\n") this.newline();
      else if (c === 8) this.col = Math.max(0, this.col - 1);
      else if (ch === "\t") this.col = Math.min(this.cols - 1, (Math.floor(this.col / 8) + 1) * 8);
      else if (c >= 0x20 && c !== 0x7f) this.put(ch);
    }
  }
  text() { return this.lines.map((l) => l.join("").replace(/\s+$/, "")).join("\n"); }
}

// asciicast v2: a header line, then [time, "o"|"i"|..., data] lines.
function parseCast(text) {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  const header = JSON.parse(lines.shift() || "{}");
  if (header.version !== 2) throw new Error("not an asciicast v2 recording");
  const events = [];
  for (const l of lines) {
    const e = JSON.parse(l);
    if (Array.isArray(e) && e[1] === "o" && typeof e[2] === "string") events.push([Number(e[0]) || 0, e[2]]);
  }
  return { header, events };
}

function player(fig) {
  const screenEl = fig.querySelector(".screen");
  let cast = null, timer = null;
  const stop = () => { if (timer) clearTimeout(timer); timer = null; };
  const load = async () => {
    if (cast) return cast;
    const response = await fetch(fig.dataset.src, { credentials: "same-origin" });
    if (!response.ok) throw new Error(await response.text());
    cast = parseCast(await response.text());
    return cast;
  };
  const fail = (e) => { screenEl.textContent = "Cannot play this recording: " + e.message; };
  fig.querySelector(".play").addEventListener("click", async () => {
    stop();
    let c;
    try { c = await load(); } catch (e) { fail(e); return; }
    const screen = new Screen(c.header.width, c.header.height);
    const speed = Number(fig.querySelector(".speed").value) || 1;
    let i = 0, last = 0;
    fig.dataset.state = "playing";
    const step = () => {
      if (i >= c.events.length) { fig.dataset.state = "done"; timer = null; return; }
      const [at, data] = c.events[i++];
      screen.write(data);
      screenEl.textContent = screen.text();
      const next = i < c.events.length ? c.events[i][0] : at;
      // Pauses are capped at 2 s: idle time in a shell is not worth watching.
      timer = setTimeout(step, Math.min(2000, Math.max(0, (next - at) * 1000 / speed)));
      last = at;
    };
    step();
    return last;
  });
  fig.querySelector(".end").addEventListener("click", async () => {
    stop();
    let c;
    try { c = await load(); } catch (e) { fail(e); return; }
    const screen = new Screen(c.header.width, c.header.height);
    for (const [, data] of c.events) screen.write(data);
    screenEl.textContent = screen.text();
    fig.dataset.state = "done";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  countdowns();
  setInterval(countdowns, 1000);
  for (const box of document.querySelectorAll("[data-poll]")) setInterval(() => poll(box), 1500);
  for (const fig of document.querySelectorAll("figure.player[data-src]")) player(fig);
});
