// Gust chat page: rooms, messages, presence and status over the Gust JavaScript client (gust.js).
// Everything a user typed is put into the page with textContent, never as HTML.
import { Client } from "./gust.js";

const cfg = document.body.dataset;
const me = cfg.user;
const maxLength = Number(cfg.maxLength);
const historyLimit = Number(cfg.historyLimit);
const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const ROOMS_REFRESH_MS = 10000;

const $ = (id) => document.getElementById(id);
const ui = {
  title: $("room-title"), status: $("status"), statusText: $("status-text"), rooms: $("room-list"),
  joinForm: $("join-form"), joinInput: $("join-room"), joinError: $("join-error"), messages: $("messages"),
  empty: $("empty"), composer: $("composer"), text: $("text"), send: $("send"), counter: $("counter"),
  sendError: $("send-error"), banner: $("banner"), online: $("online"), onlineCount: $("online-count"),
  roomsPanel: $("rooms-panel"), peoplePanel: $("people-panel"),
  toggleRooms: $("toggle-rooms"), togglePeople: $("toggle-people"),
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- connection -----------------------------------------------------------------------------------------

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${cfg.wsPath}`;

async function fetchToken() {
  const resp = await fetch(cfg.tokenUrl, { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) {
    location.assign(cfg.loginUrl);
    return ""; // not logged in any more: the client stops for good
  }
  if (!resp.ok) throw new Error(`token endpoint answered ${resp.status}`);
  return (await resp.json()).token;
}

const client = new Client(wsUrl, { token: cfg.token, getToken: fetchToken, name: "gust-chat" });
let everConnected = false;

function showStatus(state) {
  const labels = {
    connected: "Connected", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Offline",
  };
  ui.status.dataset.state = state;
  ui.statusText.textContent = labels[state];
  const banners = {
    reconnecting: "Connection lost. Reconnecting… messages sent meanwhile will be filled in.",
    offline: "You are offline. Messages will be filled in when the connection is back.",
  };
  ui.banner.textContent = banners[state] || "";
  ui.banner.hidden = !banners[state];
  ui.peoplePanel.classList.toggle("stale", state !== "connected");
}

client.on("state", ({ newState }) => {
  if (newState === "connected") {
    everConnected = true;
    showStatus("connected");
  } else if (newState === "connecting") {
    showStatus(everConnected ? "reconnecting" : "connecting");
  }
});
client.on("disconnected", ({ reason }) => {
  // Terminal: the server does not want this connection back (the client does not retry).
  showStatus("offline");
  ui.banner.textContent = `Disconnected by the server (${reason}). Reload the page to connect again.`;
});
window.addEventListener("offline", () => showStatus("offline"));

// --- one room at a time -----------------------------------------------------------------------------------

const room = {
  name: "", sub: null, epoch: "",
  offsets: new Set(), // publications shown, by offset: recovery and history never show one twice
  clients: new Map(), // client id -> user, from presence and join/leave
  lastAuthor: "",
};

function channelOf(name) { return `${cfg.namespace}:${name}`; }

function roomFromHash() {
  const name = decodeURIComponent(location.hash.slice(1)).toLowerCase();
  return ROOM_RE.test(name) ? name : cfg.defaultRoom;
}

function enterRoom(name) {
  if (name === room.name) return;
  if (room.sub) {
    room.sub.unsubscribe();
    client.removeSubscription(room.sub);
  }
  Object.assign(room, { name, sub: null, epoch: "", offsets: new Set(), clients: new Map(), lastAuthor: "" });
  ui.messages.replaceChildren();
  ui.empty.hidden = true;
  renderOnline();
  ui.title.textContent = `# ${name}`;
  document.title = `#${name} · Gust chat`;
  hideError(ui.sendError);
  const sub = client.newSubscription(channelOf(name), { recover: true });
  room.sub = sub;
  sub.on("publication", (ctx) => { if (room.sub === sub) addPublication(ctx, true); });
  sub.on("join", (ctx) => { if (room.sub === sub) onJoin(ctx.info); });
  sub.on("leave", (ctx) => { if (room.sub === sub) onLeave(ctx.info); });
  sub.on("subscribed", (ctx) => { if (room.sub === sub) onSubscribed(sub, ctx); });
  sub.on("error", (ctx) => console.warn("subscription error", ctx.error));
  sub.subscribe();
  renderRooms();
  closePanels();
}

async function onSubscribed(sub, ctx) {
  const epochChanged = room.epoch && ctx.streamPosition && ctx.streamPosition.epoch !== room.epoch;
  if (epochChanged) resetMessages();
  if (ctx.streamPosition) room.epoch = ctx.streamPosition.epoch;
  // First join, or a recovery that could not give everything: load the latest messages from history.
  if (!ctx.wasRecovering || !ctx.recovered) await loadHistory(sub);
  await loadPresence(sub);
  refreshRooms();
}

function resetMessages() {
  room.offsets = new Set();
  room.lastAuthor = "";
  ui.messages.replaceChildren();
}

async function loadHistory(sub) {
  try {
    const result = await sub.history({ limit: historyLimit, reverse: true });
    if (room.sub !== sub) return;
    const pubs = [...result.publications].reverse();
    for (const pub of pubs) addPublication(pub, false);
    ui.empty.hidden = room.offsets.size > 0;
    scrollToEnd(true);
  } catch (err) {
    console.warn("history failed", err);
  }
}

async function loadPresence(sub) {
  try {
    const result = await sub.presence();
    if (room.sub !== sub) return;
    room.clients = new Map(Object.entries(result.clients).map(([id, info]) => [id, info.user]));
    renderOnline();
  } catch (err) {
    console.warn("presence failed", err);
  }
}

// --- messages ---------------------------------------------------------------------------------------------

function formatTime(ms) {
  const when = new Date(ms);
  const sameDay = when.toDateString() === new Date().toDateString();
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${when.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function messageItem(offset, data) {
  const item = el("li", data.user === me ? "message mine" : "message");
  item.dataset.offset = String(offset);
  item.dataset.author = String(data.user);
  const meta = el("p", "meta");
  meta.append(el("span", "author", data.user === me ? "You" : String(data.user)));
  const time = el("time", "time", formatTime(Number(data.time) || Date.now()));
  if (data.time) time.dateTime = new Date(Number(data.time)).toISOString();
  meta.append(time);
  item.append(meta, el("p", "bubble", String(data.text)));
  return item;
}

function addPublication(pub, live) {
  const data = pub.data;
  if (!data || typeof data.text !== "string" || typeof data.user !== "string") return;
  const offset = Number(pub.offset || 0);
  if (offset && room.offsets.has(offset)) return;
  if (offset) room.offsets.add(offset);
  const nearBottom = isNearBottom();
  const item = messageItem(offset, data);
  // Keep offset order whatever order history, recovery and live pushes arrive in.
  let before = null;
  const messages = ui.messages.querySelectorAll("li.message");
  const last = messages[messages.length - 1];
  if (offset && last && Number(last.dataset.offset) > offset) {
    before = [...messages].find((other) => Number(other.dataset.offset) > offset);
  }
  ui.messages.insertBefore(item, before);
  markContinued(item);
  if (before) markContinued(before);
  ui.empty.hidden = true;
  if (live) scrollToEnd(nearBottom || data.user === me);
}

function markContinued(item) {
  const prev = item.previousElementSibling;
  const continued = prev && prev.classList.contains("message") && prev.dataset.author === item.dataset.author;
  item.classList.toggle("continued", Boolean(continued));
}

function addNotice(text) {
  const nearBottom = isNearBottom();
  ui.messages.append(el("li", "notice", text));
  scrollToEnd(nearBottom);
}

function isNearBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function scrollToEnd(really) {
  if (really) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// --- presence ---------------------------------------------------------------------------------------------

function usersOnline() {
  return [...new Set(room.clients.values())].sort((a, b) => a.localeCompare(b));
}

function onJoin(info) {
  if (!info) return;
  const wasHere = usersOnline().includes(info.user);
  room.clients.set(info.client, info.user);
  if (!wasHere) {
    if (info.user !== me) addNotice(`${info.user} joined`);
    renderOnline();
    refreshRooms();
  }
}

function onLeave(info) {
  if (!info) return;
  room.clients.delete(info.client);
  if (!usersOnline().includes(info.user)) {
    if (info.user !== me) addNotice(`${info.user} left`);
    renderOnline();
    refreshRooms();
  }
}

function renderOnline() {
  const users = usersOnline();
  ui.onlineCount.textContent = String(users.length);
  ui.online.replaceChildren(...users.map((user) => {
    const item = el("li", "", user);
    if (user === me) item.append(el("span", "you", "(you)"));
    return item;
  }));
}

// --- rooms list -------------------------------------------------------------------------------------------

let knownRooms = [];

async function refreshRooms() {
  try {
    const resp = await fetch(cfg.roomsUrl, { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { location.assign(cfg.loginUrl); return; }
    if (!resp.ok) return;
    knownRooms = (await resp.json()).rooms;
    renderRooms();
  } catch (err) {
    console.warn("rooms list failed", err);
  }
}

function renderRooms() {
  const rooms = [...knownRooms];
  if (room.name && !rooms.some((r) => r.name === room.name)) rooms.push({ name: room.name, users: 0 });
  ui.rooms.replaceChildren(...rooms.map(({ name, users }) => {
    const button = el("button");
    button.type = "button";
    button.append(el("span", "room-name", name), el("span", users ? "count active" : "count", String(users)));
    button.setAttribute("aria-label", `${name}, ${users} online`);
    if (name === room.name) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => { location.hash = name; });
    const item = el("li");
    item.append(button);
    return item;
  }));
}

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.joinInput.value.trim().toLowerCase();
  if (!ROOM_RE.test(name)) {
    showError(ui.joinError, "Room names are 1 to 32 lowercase letters, digits, '-' or '_'.");
    return;
  }
  hideError(ui.joinError);
  ui.joinInput.value = "";
  location.hash = name;
});

// --- sending ----------------------------------------------------------------------------------------------

function showError(node, text) { node.textContent = text; node.hidden = false; }
function hideError(node) { node.textContent = ""; node.hidden = true; }

function updateCounter() {
  const length = ui.text.value.length;
  ui.counter.textContent = length > maxLength * 0.8 ? `${length} / ${maxLength}` : "";
  ui.counter.classList.toggle("over", length > maxLength);
}

// Messages are posted one after another, so that they keep the order they were typed in.
let sending = Promise.resolve();

function send() {
  const text = ui.text.value.trim();
  if (!text) return;
  if (text.length > maxLength) {
    showError(ui.sendError, `Your message is ${text.length} characters long; the limit is ${maxLength}. Please shorten it.`);
    return;
  }
  hideError(ui.sendError);
  ui.text.value = "";
  updateCounter();
  autosize();
  const roomName = room.name;
  sending = sending.then(() => post(roomName, text));
}

async function post(roomName, text) {
  try {
    const resp = await fetch(cfg.messagesUrl.replace("__room__", encodeURIComponent(roomName)), {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": cfg.xsrf },
      body: JSON.stringify({ text }),
    });
    if (resp.status === 401) { location.assign(cfg.loginUrl); return; }
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      failed(text, body.error?.message || `Sending failed (${resp.status}). Please try again.`);
    }
  } catch (err) {
    failed(text, "You seem to be offline: the message was not sent.");
  }
}

function failed(text, message) {
  showError(ui.sendError, message);
  if (!ui.text.value && room.name) { // give the text back, so nothing typed is lost
    ui.text.value = text;
    updateCounter();
    autosize();
  }
}

function autosize() {
  ui.text.style.height = "auto";
  ui.text.style.height = `${Math.min(ui.text.scrollHeight + 2, 128)}px`;
}

ui.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
ui.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.text.addEventListener("input", () => { updateCounter(); autosize(); });

// --- narrow screens: the side panels slide over the conversation -----------------------------------------

function togglePanel(panel, button) {
  const open = !panel.classList.contains("open");
  closePanels();
  panel.classList.toggle("open", open);
  button.setAttribute("aria-expanded", String(open));
  if (open) panel.querySelector("button, input")?.focus();
}

function closePanels() {
  for (const [panel, button] of [[ui.roomsPanel, ui.toggleRooms], [ui.peoplePanel, ui.togglePeople]]) {
    panel.classList.remove("open");
    button.setAttribute("aria-expanded", "false");
  }
}

ui.toggleRooms.addEventListener("click", () => togglePanel(ui.roomsPanel, ui.toggleRooms));
ui.togglePeople.addEventListener("click", () => togglePanel(ui.peoplePanel, ui.togglePeople));
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closePanels(); });

// --- start ------------------------------------------------------------------------------------------------

window.addEventListener("hashchange", () => enterRoom(roomFromHash()));
showStatus("connecting");
enterRoom(roomFromHash());
client.connect();
refreshRooms();
setInterval(refreshRooms, ROOMS_REFRESH_MS);
window.gustChat = { client, room }; // for debugging from the console (and for the browser tests)
