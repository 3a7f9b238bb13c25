// The aray dashboard's page: plain JavaScript, no build step, no outside resources.
//
// The page is served under a strict Content-Security-Policy, so everything here is built
// with createElement/textContent (never innerHTML: task names, errors and logs are user
// text), and event handlers are attached with addEventListener.
'use strict';

// --- constants ----------------------------------------------------------------------------

const ROUTES = ['overview', 'tasks', 'actors', 'objects', 'logs', 'jobs', 'groups'];
const PAGE_SIZE = 50;
const NAME_FILTER_DELAY_MS = 300;
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 5000;
const CLOSE_UNAUTHORIZED = 4401;   // the websocket close code for "not logged in"
const TIMELINE_SECONDS = 60;
const TIMELINE_TICK_SECONDS = 10;
const LOG_START_BYTES = 65536;     // a log view starts with this much of the file's end
const LOG_MAX_CHARS = 2000000;     // past this, the log view drops its oldest text ...
const LOG_KEEP_CHARS = 1000000;    // ... down to this much
const LOG_LIST_REFRESH_MS = 5000;  // how often live updates re-read the list of log files
const BY_NAME_LIMIT = 100;         // rows of the "by name" table
const SVG_NS = 'http://www.w3.org/2000/svg';

const TASK_STATES = ['PENDING_ARGS_AVAIL', 'PENDING_NODE_ASSIGNMENT', 'RUNNING', 'FINISHED', 'FAILED'];
const TASK_FILTERS = [
  { state: '', label: 'All' },
  { state: 'PENDING_ARGS_AVAIL', label: 'Waiting for dependencies' },
  { state: 'PENDING_NODE_ASSIGNMENT', label: 'Pending' },
  { state: 'RUNNING', label: 'Running' },
  { state: 'FINISHED', label: 'Finished' },
  { state: 'FAILED', label: 'Failed' },
];
// Short column headings for the "by name" table (the full state is the heading's title).
const STATE_SHORT = {
  PENDING_ARGS_AVAIL: 'Waiting',
  PENDING_NODE_ASSIGNMENT: 'Pending',
  RUNNING: 'Running',
  FINISHED: 'Finished',
  FAILED: 'Failed',
};
// Resources whose quantities are bytes.
const BYTE_RESOURCES = new Set(['memory', 'object_store_memory']);
// Resources shown first on a node card, in this order; the others follow by name.
const RESOURCE_ORDER = ['CPU', 'GPU', 'memory', 'object_store_memory'];

// Sizes of the timeline chart, in pixels.
const TL = {
  labelWidth: 120,  // the lane labels' column
  rightPad: 24,     // room for the "now" tick label
  top: 4,
  nodeHeader: 20,
  lane: 18,
  bar: 12,
  axis: 24,
  minWidth: 480,
  minBar: 2,        // even a 1 ms task stays visible and hoverable
};

// --- state --------------------------------------------------------------------------------

const app = {
  route: 'overview',
  summary: null,
  nodes: [],
  timeline: null,
  updates: 0,            // websocket updates received (the first HTTP load yields to them)
  clockOffset: 0,        // server clock minus ours, in seconds
  errors: new Map(),     // source -> message shown in the error banner
  socket: null,
  reconnectDelay: RECONNECT_MIN_MS,
  reconnectTimer: null,
  timelineChart: null,   // {svg, gStatic, gBars, bars: Map(task_id -> rect)}
  resizeQueued: false,
};

// One paginated table per view; loadTable() fetches the current page of one.
const TABLE_VIEWS = {
  tasks: makeTableView({
    name: 'tasks', url: '/api/tasks', tbody: 'task-rows', columns: 8,
    emptyText: 'No tasks.', renderRow: renderTaskRow, params: taskParams,
  }),
  actors: makeTableView({
    name: 'actors', url: '/api/actors', tbody: 'actor-rows', columns: 8,
    emptyText: 'No actors.', renderRow: renderActorRow, after: renderActorsHeader,
  }),
  objects: makeTableView({
    name: 'objects', url: '/api/objects', tbody: 'object-rows', columns: 5,
    emptyText: 'No objects.', renderRow: renderObjectRow, after: renderObjectsHeader,
  }),
  jobs: makeTableView({
    name: 'jobs', url: '/api/jobs', tbody: 'job-rows', columns: 7,
    emptyText: 'No jobs.', renderRow: renderJobRow,
  }),
  groups: makeTableView({
    name: 'groups', url: '/api/placement_groups', tbody: 'group-rows', columns: 6,
    emptyText: 'No placement groups.', renderRow: renderGroupRow,
  }),
};

const taskFilter = { state: '', name: '' };

const logState = {
  current: null,       // {node_id, file} of the file shown
  offset: 0,           // where the next bytes of that file start
  ready: false,        // the first chunk is in: following may start from `offset`
  following: true,
  seq: 0,              // bumps per opened file, so late answers for another file are dropped
  chars: 0,            // characters in the viewer
  files: [],
  filesLoadedAt: 0,
  filesInFlight: false,
};

// --- small helpers ------------------------------------------------------------------------

function $(id) {
  return document.getElementById(id);
}

// Builds an element. props: className, text, dataset, or any attribute; children: nodes or
// strings (strings become text nodes, so they are never parsed as HTML).
function el(tag, props, children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'className') node.className = value;
      else if (key === 'text') node.textContent = String(value);
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  appendChildren(node, children);
  return node;
}

function appendChildren(node, children) {
  if (children === undefined || children === null) return;
  for (const child of Array.isArray(children) ? children : [children]) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
}

// Replaces a container's children with many rows at once (one reflow, not one per row).
function replaceWith(container, nodes) {
  const fragment = document.createDocumentFragment();
  for (const node of nodes) fragment.append(node);
  container.replaceChildren(fragment);
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function listRows(value) {
  if (Array.isArray(value)) return value;
  return (value && Array.isArray(value.rows)) ? value.rows : [];
}

function serverNow() {
  return Date.now() / 1000 + app.clockOffset;
}

// --- formatting ---------------------------------------------------------------------------

function shortId(id, length = 12) {
  return id ? String(id).slice(0, length) : '—';
}

function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[unit]}`;
}

// Resource quantities: whole numbers as they are, fractions to two decimals.
function formatQuantity(value) {
  const n = Number(value) || 0;
  return Number.isInteger(n) ? String(n) : String(Math.round(n * 100) / 100);
}

function formatResource(key, value) {
  return BYTE_RESOURCES.has(key) ? formatBytes(value) : formatQuantity(value);
}

function formatSpan(seconds) {
  if (!(seconds >= 0)) return '—';
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.floor(seconds);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = whole % 60;
  return h ? `${h}h ${m}m ${s}s` : `${m}m ${s}s`;
}

function formatTime(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return '—';
  return new Date(epochSeconds * 1000).toLocaleString();
}

function asText(value) {
  if (value === null || value === undefined) return '';
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

// The one line of an error worth showing in a table cell. A Python traceback's first line
// ("Traceback (most recent call last):") says nothing, so for those take the last line,
// which names the exception.
function errorSummary(text) {
  const lines = asText(text).split('\n').map((line) => line.trim()).filter(Boolean);
  if (lines.length === 0) return '';
  if (lines[0].startsWith('Traceback') && lines.length > 1) return lines[lines.length - 1];
  return lines[0];
}

// A CSS class for a state name (state names come from the server: keep only safe chars).
function stateClass(state) {
  return `state-${String(state || 'unknown').replace(/[^A-Za-z0-9_]/g, '')}`;
}

// Bar colours: green below 70 %, amber below 90 %, red above.
function levelClass(fraction) {
  if (fraction < 0.7) return 'level-ok';
  if (fraction < 0.9) return 'level-warn';
  return 'level-high';
}

// --- HTTP ---------------------------------------------------------------------------------

async function apiGet(path) {
  const response = await fetch(path, { headers: { Accept: 'application/json' }, cache: 'no-store' });
  if (response.status === 401) {
    // The session is gone: the server shows its login page on a reload.
    location.reload();
    throw new Error('not logged in');
  }
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error) detail = String(body.error);
    } catch (_) {
      // not JSON: keep the status
    }
    throw new Error(detail);
  }
  return response.json();
}

function setError(source, message) {
  if (message) app.errors.set(source, message);
  else app.errors.delete(source);
  const banner = $('error');
  banner.textContent = [...app.errors.values()].join(' · ');
  banner.hidden = app.errors.size === 0;
}

async function logOut() {
  try {
    await fetch('/logout', { method: 'POST' });
  } finally {
    location.reload();
  }
}

// --- routing ------------------------------------------------------------------------------

function routeFromHash() {
  const name = location.hash.replace(/^#/, '');
  return ROUTES.includes(name) ? name : 'overview';
}

function showRoute() {
  const previous = app.route;
  app.route = routeFromHash();
  for (const section of document.querySelectorAll('.page')) {
    section.hidden = section.dataset.route !== app.route;
  }
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.route === app.route);
  }
  // A log is only streamed while its page is shown.
  if (previous === 'logs' && app.route !== 'logs') pauseLog();

  if (app.route === 'overview') {
    renderOverview();
  } else if (app.route === 'tasks') {
    renderTaskCounts();
    renderByName();
    loadTable(TABLE_VIEWS.tasks, false);
  } else if (app.route === 'logs') {
    loadLogFiles(false);
    if (previous !== 'logs') resumeLog();
  } else {
    loadTable(TABLE_VIEWS[app.route], false);
  }
}

// --- live updates -------------------------------------------------------------------------

function connectSocket() {
  clearTimeout(app.reconnectTimer);
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let socket;
  try {
    socket = new WebSocket(`${scheme}//${location.host}/ws`);
  } catch (_) {
    scheduleReconnect();
    return;
  }
  app.socket = socket;
  socket.addEventListener('open', () => {
    app.reconnectDelay = RECONNECT_MIN_MS;
    setConnection(true);
    // The server forgot our log tail with the old socket: ask again from where we got to.
    if (app.route === 'logs') sendTail();
  });
  socket.addEventListener('message', (event) => handleSocketMessage(event.data));
  socket.addEventListener('close', (event) => {
    if (app.socket !== socket) return;
    app.socket = null;
    setConnection(false);
    if (event.code === CLOSE_UNAUTHORIZED) {
      location.reload();
      return;
    }
    // A handshake refused with 401 shows up here only as an abnormal close: ask the API,
    // which reloads the page (to the login form) if the session is gone.
    apiGet('/api/summary').catch(() => {});
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  const delay = app.reconnectDelay;
  app.reconnectDelay = Math.min(RECONNECT_MAX_MS, delay * 2);
  app.reconnectTimer = setTimeout(connectSocket, delay);
}

function sendSocket(message) {
  if (app.socket && app.socket.readyState === WebSocket.OPEN) {
    app.socket.send(JSON.stringify(message));
    return true;
  }
  return false;
}

function setConnection(live) {
  const box = $('connection');
  box.classList.toggle('live', live);
  box.classList.toggle('down', !live);
  $('connection-text').textContent = live ? 'live' : 'reconnecting…';
}

function handleSocketMessage(raw) {
  let message;
  try {
    message = JSON.parse(raw);
  } catch (_) {
    return;
  }
  if (!message || typeof message !== 'object') return;
  if (message.type === 'update') {
    app.updates += 1;
    applyUpdate(message);
  } else if (message.type === 'log') {
    handleLogMessage(message);
  }
}

function applyUpdate(update) {
  if (update.summary) app.summary = update.summary;
  if (update.nodes) app.nodes = listRows(update.nodes);
  if (update.timeline) {
    app.timeline = update.timeline;
    if (typeof update.timeline.now === 'number') {
      app.clockOffset = update.timeline.now - Date.now() / 1000;
    }
  }
  renderTaskCounts();
  if (app.route === 'overview') renderOverview();
  if (app.route === 'tasks') renderByName();
  refreshCurrentView();
}

// Live updates re-fetch the shown page; loadTable skips it while the last fetch still runs.
function refreshCurrentView() {
  const view = TABLE_VIEWS[app.route];
  if (view) {
    loadTable(view, true);
  } else if (app.route === 'logs' && Date.now() - logState.filesLoadedAt > LOG_LIST_REFRESH_MS) {
    loadLogFiles(true);
  }
}

// The first picture, before the websocket's first update (or if it cannot connect).
async function loadInitial() {
  try {
    const [summary, nodes, timeline] = await Promise.all([
      apiGet('/api/summary'),
      apiGet('/api/nodes'),
      apiGet(`/api/timeline?seconds=${TIMELINE_SECONDS}`),
    ]);
    setError('initial', null);
    if (app.updates === 0) applyUpdate({ summary, nodes, timeline });
  } catch (err) {
    setError('initial', `Could not load the cluster state: ${err.message}`);
  }
}

// --- overview -----------------------------------------------------------------------------

function renderOverview() {
  renderTotals();
  renderNodes();
  renderTimeline();
}

function renderTotals() {
  const box = $('totals');
  const s = app.summary;
  if (!s) {
    box.replaceChildren(el('span', { className: 'muted', text: 'Loading…' }));
    return;
  }
  const nodes = s.nodes || {};
  const jobs = s.jobs || {};
  const actors = (s.actors && s.actors.by_state) || {};
  const tasks = s.tasks || {};
  const byState = tasks.by_state || {};
  const states = [...TASK_STATES, ...Object.keys(byState).filter((k) => !TASK_STATES.includes(k))];
  const chips = states.map((state) => {
    const count = byState[state] || 0;
    return el('span', {
      className: `chip ${stateClass(state)}${count ? '' : ' zero'}`,
      title: STATE_SHORT[state] || state,
      text: `${state} ${count}`,
    });
  });
  box.replaceChildren(
    totalItem('Nodes', `${nodes.alive || 0} alive, ${nodes.dead || 0} dead`),
    totalItem('Jobs', `${jobs.alive || 0} alive`),
    totalItem('Actors', `${actors.ALIVE || 0} alive`),
    el('span', { className: 'total-item' }, [
      el('span', { className: 'total-label', text: `Tasks (${tasks.total || 0})` }),
      el('span', { className: 'chips' }, chips),
    ]),
  );
}

function totalItem(label, value) {
  return el('span', { className: 'total-item' }, [
    el('span', { className: 'total-label', text: label }),
    el('span', { className: 'total-value', text: value }),
  ]);
}

// Node cards are kept per node id and refilled, so the page does not jump on updates.
function renderNodes() {
  const box = $('nodes');
  if (app.nodes.length === 0) {
    box.replaceChildren(el('p', { className: 'muted', text: 'No nodes yet.' }));
    return;
  }
  const existing = new Map();
  for (const card of box.querySelectorAll('.node-card')) existing.set(card.dataset.nodeId, card);
  // The head first, dead nodes last; otherwise the server's order.
  const rank = (node) => (node.is_head ? 0 : 1) + (node.Alive === false ? 2 : 0);
  const nodes = [...app.nodes].sort((a, b) => rank(a) - rank(b));
  const cards = nodes.map((node) => {
    const card = existing.get(node.NodeID)
      || el('div', { className: 'node-card', dataset: { nodeId: node.NodeID } });
    fillNodeCard(card, node);
    return card;
  });
  replaceWith(box, cards);
}

function fillNodeCard(card, node) {
  const alive = node.Alive !== false;
  card.classList.toggle('dead', !alive);
  const head = el('div', { className: 'node-head' }, [
    el('span', { className: 'node-id mono', text: shortId(node.NodeID), title: node.NodeID }),
    el('span', { className: 'node-ip', text: node.NodeManagerAddress || '' }),
    node.is_head ? el('span', { className: 'badge badge-head', text: 'head' }) : null,
    el('span', {
      className: `badge ${alive ? 'state-ALIVE' : 'state-DEAD'}`,
      text: alive ? 'ALIVE' : 'DEAD',
    }),
  ]);
  // replaceChildren would print a missing section as "null": drop those first.
  const sections = [
    head,
    resourceBars(node, alive),
    objectStoreSection(node.ObjectStore),
    hostSection(node.Host),
    demandsSection(node.PendingDemands),
  ];
  card.replaceChildren(...sections.filter(Boolean));
}

function resourceKeys(resources) {
  const keys = Object.keys(resources).filter((key) => !key.startsWith('node:'));
  const first = RESOURCE_ORDER.filter((key) => keys.includes(key));
  const rest = keys.filter((key) => !RESOURCE_ORDER.includes(key)).sort();
  return [...first, ...rest];
}

function resourceBars(node, alive) {
  const total = node.Resources || {};
  const available = node.Available || {};
  const bars = resourceKeys(total).map((key) => {
    // A live node leaves out resources it has none of left; a dead one reports nothing,
    // so show it as unused.
    const free = key in available ? Number(available[key]) : (alive ? 0 : Number(total[key]));
    const used = Math.max(0, Number(total[key]) - free);
    return bar(`${key} ${formatResource(key, used)} / ${formatResource(key, total[key])}`,
      used, Number(total[key]), 'resource');
  });
  return el('div', { className: 'bars' }, bars);
}

function objectStoreSection(store) {
  if (!store || store.capacity_bytes === undefined) return null;
  const used = Number(store.used_bytes) || 0;
  const capacity = Number(store.capacity_bytes) || 0;
  const spilled = Number(store.spilled_bytes) || 0;
  const numSpilled = Number(store.num_spilled) || 0;
  const objects = Number(store.num_objects) || 0;
  return el('div', { className: 'bars' }, [
    bar(`object store ${formatBytes(used)} / ${formatBytes(capacity)}`, used, capacity, 'store'),
    el('div', {
      className: 'bar-note muted',
      text: `${objects} object${objects === 1 ? '' : 's'} · ${formatBytes(spilled)} spilled`
        + (numSpilled ? ` (${numSpilled} object${numSpilled === 1 ? '' : 's'})` : ''),
    }),
  ]);
}

function hostSection(host) {
  if (!host || host.cpu_percent === undefined) return null;
  const cpu = Number(host.cpu_percent) || 0;
  const memUsed = Number(host.memory_used) || 0;
  const memTotal = Number(host.memory_total) || 0;
  return el('div', { className: 'bars' }, [
    bar(`host CPU ${cpu.toFixed(1)} %`, cpu, 100, 'host-cpu'),
    bar(`host memory ${formatBytes(memUsed)} / ${formatBytes(memTotal)}`, memUsed, memTotal,
      'host-memory'),
  ]);
}

function demandsSection(demands) {
  if (!Array.isArray(demands) || demands.length === 0) return null;
  const items = demands.map((demand) => {
    const [shape, count, infeasible] = Array.isArray(demand) ? demand : [demand, 1, false];
    const text = Object.entries(shape || {})
      .map(([key, value]) => `${key}: ${formatResource(key, value)}`)
      .join(', ') || '{}';
    return el('li', { className: infeasible ? 'infeasible' : '' }, [
      `${text} × ${count}`,
      infeasible ? el('span', { className: 'infeasible-note', text: ' infeasible' }) : null,
    ]);
  });
  return el('div', { className: 'demands' }, [
    el('div', { className: 'demands-title', text: 'Pending demands' }),
    el('ul', null, items),
  ]);
}

// A labelled bar: the text ("CPU 1 / 2") and a track filled to used/total.
function bar(text, used, total, kind) {
  const fraction = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  const fill = el('div', { className: `bar-fill ${levelClass(fraction)}` });
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  return el('div', { className: `bar-row bar-${kind}` }, [
    el('span', { className: 'bar-text', text, title: text }),
    el('div', { className: 'bar-track', title: `${Math.round(fraction * 100)} %` }, fill),
  ]);
}

// --- timeline chart -----------------------------------------------------------------------

// Lanes, one per (node, worker pid), grouped by node in the order of the node cards.
function timelineGroups(rows) {
  const groups = new Map();
  for (const row of rows) {
    const nodeId = row.node_id || '';
    if (!groups.has(nodeId)) groups.set(nodeId, new Set());
    groups.get(nodeId).add(row.worker_pid ?? null);
  }
  const order = new Map(app.nodes.map((node, i) => [node.NodeID, node.is_head ? -1 : i]));
  const place = (nodeId) => (order.has(nodeId) ? order.get(nodeId) : Infinity);
  return [...groups.entries()]
    .sort(([a], [b]) => (place(a) - place(b)) || a.localeCompare(b))
    .map(([nodeId, pids]) => ({
      nodeId,
      pids: [...pids].sort((x, y) => (x ?? -1) - (y ?? -1)),
    }));
}

function laneKey(nodeId, pid) {
  return `${nodeId || ''}|${pid ?? ''}`;
}

function nodeLabel(nodeId) {
  const node = app.nodes.find((n) => n.NodeID === nodeId);
  const parts = [`node ${shortId(nodeId)}`];
  if (node && node.NodeManagerAddress) parts.push(node.NodeManagerAddress);
  if (node && node.is_head) parts.push('head');
  return parts.join(' · ');
}

function timelineTooltip(row, now) {
  const running = row.end === null || row.end === undefined;
  const duration = ((running ? now : row.end) - row.start).toFixed(3);
  return `${row.name || '?'}\n${running ? 'running for ' : ''}${duration} s · ${row.state}`;
}

function renderTimeline() {
  const box = $('timeline');
  const data = app.timeline;
  const now = data && typeof data.now === 'number' ? data.now : serverNow();
  const since = now - TIMELINE_SECONDS;
  const rows = listRows(data).filter((row) => row.start !== null && row.start !== undefined
    && (row.end === null || row.end === undefined || row.end >= since));
  if (rows.length === 0) {
    app.timelineChart = null;
    box.replaceChildren(el('p', { className: 'muted timeline-empty', text: 'No tasks in the last minute' }));
    return;
  }

  const chart = ensureTimelineChart(box);
  const width = Math.max(TL.minWidth, box.clientWidth);
  const plotLeft = TL.labelWidth;
  const plotRight = width - TL.rightPad;
  const xOf = (t) => plotLeft + ((t - since) / TIMELINE_SECONDS) * (plotRight - plotLeft);

  // Lay the lanes out top to bottom; the labels and the grid are redrawn every time.
  const statics = [];
  const laneY = new Map();
  let y = TL.top;
  let stripe = 0;
  for (const group of timelineGroups(rows)) {
    statics.push(svgEl('text', { x: 4, y: y + 14, class: 'tl-node-label' }, nodeLabel(group.nodeId)));
    y += TL.nodeHeader;
    for (const pid of group.pids) {
      laneY.set(laneKey(group.nodeId, pid), y);
      statics.push(svgEl('rect', {
        x: 0, y, width, height: TL.lane, class: stripe % 2 ? 'tl-lane tl-lane-odd' : 'tl-lane',
      }));
      statics.push(svgEl('text', { x: plotLeft - 8, y: y + 13, class: 'tl-lane-label' },
        pid ? `pid ${pid}` : 'pid ?'));
      stripe += 1;
      y += TL.lane;
    }
  }
  const plotBottom = y;
  for (let ago = TIMELINE_SECONDS; ago >= 0; ago -= TIMELINE_TICK_SECONDS) {
    const x = xOf(now - ago);
    statics.push(svgEl('line', { x1: x, y1: TL.top, x2: x, y2: plotBottom + 4, class: 'tl-grid' }));
    statics.push(svgEl('text', {
      x, y: plotBottom + 17, class: 'tl-tick', 'text-anchor': ago === 0 ? 'end' : 'middle',
    }, ago === 0 ? 'now' : `-${ago} s`));
  }
  setAttrs(chart.svg, { width, height: plotBottom + TL.axis });
  replaceWith(chart.gStatic, statics);

  // Bars are kept per task id and moved, so a hover tooltip survives the next update.
  const seen = new Set();
  for (const row of rows) {
    const top = laneY.get(laneKey(row.node_id, row.worker_pid));
    if (top === undefined) continue;
    const start = Math.max(row.start, since);
    const end = row.end === null || row.end === undefined ? now : Math.min(row.end, now);
    const x = xOf(start);
    let rect = chart.bars.get(row.task_id);
    if (!rect) {
      rect = svgEl('rect');
      rect.append(svgEl('title'));
      chart.bars.set(row.task_id, rect);
      chart.gBars.append(rect);
    }
    setAttrs(rect, {
      x: x.toFixed(1),
      y: top + (TL.lane - TL.bar) / 2,
      width: Math.max(TL.minBar, xOf(end) - x).toFixed(1),
      height: TL.bar,
      class: `tl-bar ${stateClass(row.state)}`,
      'data-task-id': row.task_id,
    });
    const tip = timelineTooltip(row, now);
    if (rect.firstChild.textContent !== tip) rect.firstChild.textContent = tip;
    seen.add(row.task_id);
  }
  for (const [taskId, rect] of chart.bars) {
    if (!seen.has(taskId)) {
      rect.remove();
      chart.bars.delete(taskId);
    }
  }
}

function ensureTimelineChart(box) {
  const chart = app.timelineChart;
  if (chart && box.contains(chart.svg)) return chart;
  const svg = svgEl('svg', { class: 'timeline-svg', role: 'img', 'aria-label': 'Task timeline' });
  const gStatic = svgEl('g', { class: 'tl-static' });
  const gBars = svgEl('g', { class: 'tl-bars' });
  svg.append(gStatic, gBars);
  box.replaceChildren(svg);
  app.timelineChart = { svg, gStatic, gBars, bars: new Map() };
  return app.timelineChart;
}

// Redraw the chart at the new width, once per frame at most.
function onResize() {
  if (app.resizeQueued) return;
  app.resizeQueued = true;
  requestAnimationFrame(() => {
    app.resizeQueued = false;
    if (app.route === 'overview') renderTimeline();
  });
}

// --- paginated tables ---------------------------------------------------------------------

function makeTableView(options) {
  return { offset: 0, total: 0, seq: 0, inFlight: false, ...options };
}

// Fetches the view's current page. fromUpdate: a live refresh, skipped while the previous
// fetch still runs; a user's action (page, filter) always fetches, and the newest wins.
async function loadTable(view, fromUpdate) {
  if (fromUpdate && view.inFlight) return;
  const seq = ++view.seq;
  view.inFlight = true;
  const params = new URLSearchParams(view.params ? view.params() : undefined);
  params.set('offset', String(view.offset));
  params.set('limit', String(PAGE_SIZE));
  try {
    const data = await apiGet(`${view.url}?${params}`);
    if (seq !== view.seq) return;  // a newer request (another page or filter) replaced this one
    let rows = listRows(data);
    const total = Number(data.total ?? rows.length);
    if (rows.length > PAGE_SIZE) {
      // The endpoint ignored the window and sent every row: take our page ourselves.
      const start = view.offset - (Number(data.offset) || 0);
      rows = rows.slice(start, start + PAGE_SIZE);
    }
    if (rows.length === 0 && view.offset > 0 && total > 0) {
      // Our page is gone (rows were dropped since): show the last page there is.
      view.offset = Math.floor((total - 1) / PAGE_SIZE) * PAGE_SIZE;
      loadTable(view, false);
      return;
    }
    view.total = total;
    renderTableBody(view, rows);
    renderPager(view, rows.length);
    if (view.after) view.after(data);
    setError(view.name, null);
  } catch (err) {
    if (seq === view.seq) setError(view.name, `Could not load ${view.name}: ${err.message}`);
  } finally {
    if (seq === view.seq) view.inFlight = false;
  }
}

function renderTableBody(view, rows) {
  const tbody = $(view.tbody);
  if (rows.length === 0) {
    tbody.replaceChildren(el('tr', { className: 'empty' }, el('td', {
      colspan: view.columns, className: 'muted', text: view.emptyText,
    })));
    return;
  }
  replaceWith(tbody, rows.map(view.renderRow));
}

function renderPager(view, count) {
  $(`${view.name}-range`).textContent = view.total === 0
    ? 'no rows'
    : `rows ${view.offset + 1}–${view.offset + count} of ${view.total}`;
  $(`${view.name}-prev`).disabled = view.offset === 0;
  $(`${view.name}-next`).disabled = view.offset + count >= view.total;
}

function wirePager(view) {
  $(`${view.name}-prev`).addEventListener('click', () => {
    view.offset = Math.max(0, view.offset - PAGE_SIZE);
    loadTable(view, false);
  });
  $(`${view.name}-next`).addEventListener('click', () => {
    if (view.offset + PAGE_SIZE >= view.total) return;
    view.offset += PAGE_SIZE;
    loadTable(view, false);
  });
}

// Table cells shared by the views.

function idCell(id, length) {
  if (!id) return el('td', { className: 'mono muted', text: '—' });
  const text = length ? shortId(id, length) : String(id);
  return el('td', { className: 'mono id', text, title: String(id) });
}

function numCell(value) {
  return el('td', { className: 'num mono', text: value ?? '—' });
}

// A process id; 0 or none means "not on a worker yet".
function pidCell(pid) {
  return numCell(pid ? pid : null);
}

function errorCell(error) {
  const full = asText(error);
  if (!full) return el('td', { className: 'error-cell' });
  return el('td', { className: 'error-cell', text: errorSummary(full), title: full });
}

function stateChip(state) {
  return el('span', {
    className: `chip ${stateClass(state)}`,
    text: state || '—',
    title: STATE_SHORT[state] || null,
  });
}

// --- tasks --------------------------------------------------------------------------------

function taskParams() {
  const params = {};
  if (taskFilter.state) params.state = taskFilter.state;
  if (taskFilter.name) params.name = taskFilter.name;
  return params;
}

function taskDuration(task) {
  if (task.state === 'RUNNING') return 'running…';
  let duration = task.duration_s;
  if ((duration === null || duration === undefined)
      && task.started_at !== null && task.started_at !== undefined
      && task.ended_at !== null && task.ended_at !== undefined) {
    duration = task.ended_at - task.started_at;
  }
  return duration === null || duration === undefined ? '—' : Number(duration).toFixed(3);
}

function renderTaskRow(task) {
  const type = task.type === 'ACTOR_TASK' ? 'actor task' : task.type === 'NORMAL_TASK' ? 'task' : task.type;
  // Task ids are shown whole: they are short already, and their first half is the same for
  // every task one process submits.
  return el('tr', { dataset: { taskId: task.task_id } }, [
    el('td', { className: 'name', text: task.name ?? '', title: task.name || null }),
    el('td', null, stateChip(task.state)),
    el('td', { className: 'muted', text: type || '', title: task.type || null }),
    idCell(task.node_id, 12),
    pidCell(task.worker_pid),
    el('td', { className: 'num mono', text: taskDuration(task) }),
    errorCell(task.error),
    idCell(task.task_id),
  ]);
}

function buildTaskFilters() {
  const box = $('task-filters');
  for (const filter of TASK_FILTERS) {
    const button = el('button', {
      type: 'button',
      className: 'filter',
      dataset: { state: filter.state },
      title: filter.state || 'every state',
    }, [filter.label, ' ', el('span', { className: 'count', text: '0' })]);
    button.addEventListener('click', () => setTaskState(filter.state));
    box.append(button);
  }
  markTaskFilter();
}

function setTaskState(state) {
  taskFilter.state = state;
  TABLE_VIEWS.tasks.offset = 0;
  markTaskFilter();
  loadTable(TABLE_VIEWS.tasks, false);
}

function setTaskName(name) {
  if (name === taskFilter.name) return;
  taskFilter.name = name;
  TABLE_VIEWS.tasks.offset = 0;
  loadTable(TABLE_VIEWS.tasks, false);
}

function markTaskFilter() {
  for (const button of document.querySelectorAll('#task-filters .filter')) {
    const active = button.dataset.state === taskFilter.state;
    button.classList.toggle('active', active);
    button.setAttribute('aria-pressed', String(active));
  }
}

function renderTaskCounts() {
  const tasks = (app.summary && app.summary.tasks) || {};
  const byState = tasks.by_state || {};
  for (const button of document.querySelectorAll('#task-filters .filter')) {
    const state = button.dataset.state;
    const count = state ? (byState[state] || 0) : (tasks.total || 0);
    button.querySelector('.count').textContent = String(count);
  }
}

// The name × state counts of the summary, the names with the most tasks first.
function renderByName() {
  const byName = (app.summary && app.summary.tasks && app.summary.tasks.by_name) || {};
  const entries = Object.entries(byName);
  const states = [...TASK_STATES];
  for (const [, counts] of entries) {
    for (const state of Object.keys(counts)) if (!states.includes(state)) states.push(state);
  }

  const head = $('task-by-name-head');
  const headKey = states.join(',');
  if (head.dataset.key !== headKey) {
    head.dataset.key = headKey;
    head.replaceChildren(el('tr', null, [
      el('th', { text: 'Name' }),
      ...states.map((state) => el('th', { className: 'num', text: STATE_SHORT[state] || state, title: state })),
      el('th', { className: 'num', text: 'Total' }),
    ]));
  }

  const rows = entries
    .map(([name, counts]) => ({ name, counts, total: Object.values(counts).reduce((a, b) => a + b, 0) }))
    .sort((a, b) => (b.total - a.total) || a.name.localeCompare(b.name));
  const shown = rows.slice(0, BY_NAME_LIMIT);
  const tbody = $('task-by-name');
  if (shown.length === 0) {
    tbody.replaceChildren(el('tr', { className: 'empty' }, el('td', {
      colspan: states.length + 2, className: 'muted', text: 'No tasks.',
    })));
  } else {
    replaceWith(tbody, shown.map((row) => el('tr', { dataset: { name: row.name } }, [
      el('td', { className: 'name' }, el('button', {
        type: 'button', className: 'linklike', dataset: { name: row.name },
        title: 'Show only tasks with this name', text: row.name,
      })),
      ...states.map((state) => el('td', {
        className: `num mono${row.counts[state] ? '' : ' muted'}`, text: row.counts[state] || 0,
      })),
      el('td', { className: 'num mono', text: row.total }),
    ])));
  }
  const more = $('task-by-name-more');
  more.hidden = rows.length <= BY_NAME_LIMIT;
  more.textContent = `… and ${rows.length - BY_NAME_LIMIT} more names`;
}

// --- actors, objects, jobs ----------------------------------------------------------------

function renderActorRow(actor) {
  const max = actor.max_restarts;
  const restarts = max === undefined || max === null
    ? String(actor.restarts ?? 0)
    : `${actor.restarts ?? 0} / ${max < 0 ? '∞' : max}`;
  return el('tr', { dataset: { actorId: actor.actor_id } }, [
    el('td', { className: 'name', text: actor.class_name || '', title: actor.class_name || null }),
    el('td', { text: actor.name || '', title: actor.namespace ? `namespace ${actor.namespace}` : null }),
    el('td', null, stateChip(actor.state)),
    idCell(actor.node_id, 12),
    pidCell(actor.pid),
    el('td', { className: 'num mono', text: restarts, title: 'restarts / max restarts' }),
    errorCell(actor.death_cause),
    idCell(actor.actor_id),
  ]);
}

function renderActorsHeader(data) {
  const total = Number(data.total) || 0;
  $('actors-header').textContent = `${total} actor${total === 1 ? '' : 's'}`;
}

function renderObjectRow(obj) {
  const nodes = Array.isArray(obj.nodes) ? obj.nodes : [];
  return el('tr', { dataset: { objectId: obj.object_id } }, [
    idCell(obj.object_id),
    el('td', { className: 'num mono', text: formatBytes(obj.size), title: `${obj.size} bytes` }),
    el('td', { className: 'mono owner', text: obj.owner || '—', title: obj.owner || null }),
    el('td', {
      className: 'num mono', text: nodes.length, title: nodes.map((id) => shortId(id)).join(', ') || null,
    }),
    el('td', { className: obj.spilled ? 'spilled' : 'muted', text: obj.spilled ? 'yes' : 'no' }),
  ]);
}

function renderObjectsHeader(data) {
  const total = Number(data.total) || 0;
  $('objects-header').textContent = `${total} object${total === 1 ? '' : 's'}, `
    + `${formatBytes(data.total_bytes)} in total`;
}

// A placement group: its bundles (index: resources) and the node each is reserved on.
function renderGroupRow(group) {
  const bundles = Object.entries(group.bundles || {}).map(([i, shape]) => {
    const node = (group.bundles_to_node_id || {})[i];
    const resources = Object.entries(shape).map(([k, v]) => `${k}: ${v}`).join(', ');
    return `${i}: {${resources}}${node ? ` on ${shortId(node, 8)}` : ''}`;
  });
  return el('tr', { dataset: { groupId: group.placement_group_id } }, [
    idCell(group.placement_group_id),
    el('td', { text: group.name || '', title: group.name || null }),
    el('td', null, stateChip(group.state)),
    el('td', { text: group.strategy || '' }),
    el('td', { className: 'mono', text: bundles.join('; ') }),
    el('td', { text: group.is_detached ? 'detached' : (group.job_id || '') }),
  ]);
}

function renderJobRow(job) {
  const end = job.end_time === null || job.end_time === undefined ? serverNow() : job.end_time;
  const start = job.start_time;
  return el('tr', { dataset: { jobId: job.job_id } }, [
    idCell(job.job_id),
    pidCell(job.driver_pid),
    el('td', { text: job.namespace || '', title: job.namespace || null }),
    el('td', null, el('span', {
      className: `chip ${job.alive ? 'state-ALIVE' : 'state-DEAD'}`, text: job.alive ? 'yes' : 'no',
    })),
    // a job of `aray job submit`: its submission id and state (SUCCEEDED, STOPPED...)
    el('td', { text: job.submission_id ? `${job.submission_id} (${job.submission_status || '?'})` : '—',
               title: job.submission_id || null }),
    el('td', { text: formatTime(start) }),
    el('td', { className: 'num mono', text: typeof start === 'number' ? formatSpan(end - start) : '—' }),
  ]);
}

// --- logs ---------------------------------------------------------------------------------

async function loadLogFiles(fromUpdate) {
  if (fromUpdate && logState.filesInFlight) return;
  logState.filesInFlight = true;
  logState.filesLoadedAt = Date.now();
  try {
    const data = await apiGet('/api/logs');
    logState.files = listRows(data);
    renderLogFiles();
    setError('logs', null);
  } catch (err) {
    setError('logs', `Could not list the log files: ${err.message}`);
  } finally {
    logState.filesInFlight = false;
  }
}

function renderLogFiles() {
  const box = $('log-files');
  if (logState.files.length === 0) {
    box.replaceChildren(el('p', { className: 'muted', text: 'No log files.' }));
    return;
  }
  const byNode = new Map();
  for (const file of logState.files) {
    if (!byNode.has(file.node_id)) byNode.set(file.node_id, []);
    byNode.get(file.node_id).push(file);
  }
  const order = new Map(app.nodes.map((node, i) => [node.NodeID, node.is_head ? -1 : i]));
  const place = (nodeId) => (order.has(nodeId) ? order.get(nodeId) : Infinity);
  const groups = [...byNode.entries()]
    .sort(([a], [b]) => (place(a) - place(b)) || String(a).localeCompare(String(b)))
    .map(([nodeId, files]) => {
      // By worker, its stdout before its stderr.
      files.sort((a, b) => ((a.pid ?? 0) - (b.pid ?? 0))
        || Number(a.stream === 'err') - Number(b.stream === 'err')
        || String(a.file).localeCompare(String(b.file)));
      return el('div', { className: 'log-node' }, [
        el('h3', { className: 'log-node-title', text: nodeLabel(nodeId), title: nodeId }),
        el('ul', { className: 'log-list' }, files.map((file) => el('li', null, logFileButton(file)))),
      ]);
    });
  replaceWith(box, groups);
}

function logFileButton(file) {
  const current = logState.current;
  const selected = current && current.node_id === file.node_id && current.file === file.file;
  return el('button', {
    type: 'button',
    className: `log-file${selected ? ' selected' : ''}`,
    dataset: { nodeId: file.node_id, file: file.file },
    title: file.file,
  }, [
    el('span', { className: 'mono log-pid', text: file.pid === null || file.pid === undefined ? file.file : `pid ${file.pid}` }),
    el('span', { className: `badge stream-${file.stream === 'err' ? 'err' : 'out'}`, text: file.stream || '?' }),
    el('span', { className: 'log-size muted', text: formatBytes(file.size) }),
    el('span', { className: file.alive ? 'log-alive' : 'log-exited muted', text: file.alive ? 'alive' : 'exited' }),
  ]);
}

function markSelectedLogFile() {
  const current = logState.current;
  for (const button of document.querySelectorAll('#log-files .log-file')) {
    button.classList.toggle('selected', Boolean(current)
      && button.dataset.nodeId === current.node_id && button.dataset.file === current.file);
  }
}

function logUrl(nodeId, file, offset, limit) {
  return `/api/logs/${encodeURIComponent(nodeId)}/${encodeURIComponent(file)}`
    + `?offset=${offset}&limit=${limit}`;
}

function openLog(nodeId, file) {
  logState.current = { node_id: nodeId, file };
  logState.following = true;
  markSelectedLogFile();
  startLog();
}

// Shows the end of the current file over HTTP, then follows it over the websocket from
// where that chunk ended.
async function startLog() {
  const current = logState.current;
  if (!current) return;
  const seq = ++logState.seq;
  logState.ready = false;
  sendSocket({ type: 'untail' });  // the previous stream's bytes are not wanted any more
  clearLogView();
  updateLogToolbar();
  try {
    const data = await apiGet(logUrl(current.node_id, current.file, -LOG_START_BYTES, LOG_START_BYTES));
    if (seq !== logState.seq) return;
    appendLog(data.data || '', true);
    logState.offset = Number(data.offset) || 0;
    logState.ready = true;
    if (logState.following && app.route === 'logs') sendTail();
  } catch (err) {
    if (seq === logState.seq) appendLog(`[could not read ${current.file}: ${err.message}]\n`, true);
  }
}

function sendTail() {
  const current = logState.current;
  if (!current || !logState.ready || !logState.following) return;
  sendSocket({ type: 'tail', node_id: current.node_id, file: current.file, offset: logState.offset });
}

function handleLogMessage(message) {
  const current = logState.current;
  if (!current || message.node_id !== current.node_id || message.file !== current.file) return;
  if (!logState.ready || !logState.following) return;  // a stream we no longer want
  if (message.error) {
    appendLog(`\n[stopped following: ${message.error}]\n`, false);
    return;
  }
  if (message.data) appendLog(message.data, false);
  if (typeof message.offset === 'number' && message.offset >= 0) logState.offset = message.offset;
}

function toggleFollow() {
  logState.following = !logState.following;
  if (logState.following) {
    // Start again from the file's end rather than replaying what came in meanwhile.
    startLog();
  } else {
    sendSocket({ type: 'untail' });
    updateLogToolbar();
  }
}

// Leaving the logs page stops the stream; coming back shows the file's end again.
function pauseLog() {
  logState.seq += 1;  // an HTTP read still under way is not wanted any more
  logState.ready = false;
  sendSocket({ type: 'untail' });
}

function resumeLog() {
  if (logState.current && logState.following) startLog();
}

function updateLogToolbar() {
  const current = logState.current;
  const title = $('log-title');
  const button = $('log-follow');
  if (!current) {
    title.textContent = 'Choose a log file.';
    button.disabled = true;
    return;
  }
  const file = logState.files.find((f) => f.node_id === current.node_id && f.file === current.file);
  const who = file && file.pid !== null && file.pid !== undefined ? `pid ${file.pid} ${file.stream || ''} · ` : '';
  title.textContent = `${who}${current.file} on node ${shortId(current.node_id)}`;
  title.classList.remove('muted');
  button.disabled = false;
  button.textContent = logState.following ? 'Stop following' : 'Follow';
  button.classList.toggle('active', !logState.following);
}

function clearLogView() {
  $('log-view').textContent = '';
  logState.chars = 0;
}

// Appends text; keeps the view at the bottom if it was there (the user did not scroll up).
function appendLog(text, forceBottom) {
  if (!text) return;
  const view = $('log-view');
  const atBottom = forceBottom || view.scrollHeight - view.scrollTop - view.clientHeight < 24;
  view.append(text);
  logState.chars += text.length;
  if (logState.chars > LOG_MAX_CHARS) {
    // Very chatty logs: keep the browser responsive by dropping the oldest text.
    const kept = view.textContent.slice(-LOG_KEEP_CHARS);
    view.textContent = kept;
    logState.chars = kept.length;
  }
  if (atBottom) view.scrollTop = view.scrollHeight;
}

// --- start --------------------------------------------------------------------------------

function init() {
  buildTaskFilters();
  for (const view of Object.values(TABLE_VIEWS)) wirePager(view);

  const nameInput = $('task-name-filter');
  const applyName = debounce(() => setTaskName(nameInput.value.trim()), NAME_FILTER_DELAY_MS);
  nameInput.addEventListener('input', applyName);

  // Clicking a name in the "by name" table filters the task list by it.
  $('task-by-name').addEventListener('click', (event) => {
    const button = event.target.closest('button[data-name]');
    if (!button) return;
    nameInput.value = button.dataset.name;
    setTaskName(button.dataset.name);
    nameInput.scrollIntoView({ block: 'nearest' });
  });

  $('log-files').addEventListener('click', (event) => {
    const button = event.target.closest('.log-file');
    if (button) openLog(button.dataset.nodeId, button.dataset.file);
  });
  $('log-follow').addEventListener('click', toggleFollow);
  $('logout').addEventListener('click', logOut);
  window.addEventListener('hashchange', showRoute);
  window.addEventListener('resize', onResize);

  setConnection(false);
  showRoute();
  loadInitial();
  connectSocket();
}

if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', init);
} else {
  init();
}
