// The robot panel: the table of ../shared/WORLD.md simulated here, in the page, and driven live
// through /v1/policy at its control rate, as clients/robot_loop.py drives a robot.
//
// The table's step is docs/table_task.md's (chunking/dynamics/table.py in Python): a point
// gripper velocity-commanded with a first-order lag, stopped by the table's edges. The goal
// enters the observation as a token (target x, y and the goal kind one-hot), the way a prompt
// enters a VLA's. The loop is clients/robot_loop.py's contract, ported: it never waits for the
// network; each tick it merges an arrived chunk (chunking.merge's rule: a chunk replaces the
// plan from the tick it arrives, ticks that already ran are skipped, ticks spent holding
// consume nothing, a chunk older than the plan is dropped), asks for the next chunk once s
// actions of this one have run, executes the planned action or holds the last one (an
// underrun). "Injected latency" holds each reply that long before the loop may see it, as a
// slower model (a VLA) would: d, measured from ticks, grows with it.

export const TABLE = {HALF_X: 0.6, HALF_Y: 0.4, V_MAX: 0.5, TAU: 0.05};
export const GOAL_KINDS = ["reach", "move", "region", "stop"];
export const COLORS = {red: "#d62728", green: "#2ca02c", blue: "#1f77b4", yellow: "#e8c31a"};
export const SHAPES = ["cube", "ball", "ring"];
// Region name -> its centre on the table, metres (clients/sim/table.py REGION_CENTRES).
export const REGIONS = {
  centre: [0, 0], left: [-0.42, 0], right: [0.42, 0], top: [0, 0.27], bottom: [0, -0.27],
  top_left: [-0.45, 0.28], top_right: [0.45, 0.28], bottom_left: [-0.45, -0.28], bottom_right: [0.45, -0.28],
};
export const STEP_M = 0.05; // one "step" of a move goal (clients/sim/table.py STEP)
export const MARGIN = 0.05; // goal targets stay this far inside the edges
export const OBJECT_REACH = 7 * 0.05; // objects lie within this of the centre, per axis (m)

function mulberry32(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

export class Table {
  constructor(seed = 1) { this.reset(seed); }

  reset(seed = this.seed + 1) {
    this.seed = seed;
    const rand = mulberry32(seed);
    const pairs = [];
    for (const color of Object.keys(COLORS)) for (const shape of SHAPES) pairs.push({color, shape});
    for (let i = pairs.length - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [pairs[i], pairs[j]] = [pairs[j], pairs[i]]; }
    const count = 3 + Math.floor(rand() * 2);
    this.objects = [];
    for (const pair of pairs) {
      if (this.objects.length === count) break;
      for (let attempt = 0; attempt < 50; attempt++) {
        // Within 7 steps of the centre on both axes: the language model's table
        // (models.world_grammar, TABLE_STEPS) is that big, so its distances are the robot's.
        const x = (rand() * 2 - 1) * OBJECT_REACH, y = (rand() * 2 - 1) * Math.min(OBJECT_REACH, TABLE.HALF_Y - MARGIN - 0.03);
        // Farther apart than the task's OBJECT_SPACING (0.15 m), so that each reads clearly.
        const far = this.objects.every((o) => Math.hypot(o.x - x, o.y - y) > 0.22) && Math.hypot(x, y) > 0.15;
        if (far) { this.objects.push({...pair, x, y}); break; }
      }
    }
    this.p = [0, 0]; this.v = [0, 0];
    this.goal = {action: "stop"}; this.target = [0, 0]; this.kind = "stop";
    this.paused = null; // the goal a "wait" put aside, for "carry on"
    this.speed = 1.0;
    return this;
  }

  // The observation /v1/policy gets: [px, py, vx, vy, gx, gy, one-hot(kind)].
  state() {
    const onehot = GOAL_KINDS.map((k) => (k === this.kind ? 1 : 0));
    return [this.p[0], this.p[1], this.v[0], this.v[1], this.target[0], this.target[1], ...onehot];
  }

  step(action, dt) {
    const a = (action || [0, 0]).map((x) => clamp(x, -1, 1)); // docs/table_task.md: clip, then step
    for (let i = 0; i < 2; i++) {
      const half = i === 0 ? TABLE.HALF_X : TABLE.HALF_Y;
      this.v[i] += (TABLE.V_MAX * this.speed * a[i] - this.v[i]) * (dt / TABLE.TAU);
      this.p[i] += this.v[i] * dt;
      if (Math.abs(this.p[i]) > half) { this.v[i] = 0; this.p[i] = clamp(this.p[i], -half, half); }
    }
  }

  // The nearest object that fits (a colour or a shape alone may name one), as goal_target does.
  findObject(goal) {
    const fits = this.objects.filter((o) => (!goal.color || o.color === goal.color) && (!goal.shape || o.shape === goal.shape));
    const d = (o) => Math.hypot(o.x - this.p[0], o.y - this.p[1]);
    return fits.sort((a, b) => d(a) - d(b))[0];
  }

  // A goal of the grammar (models/world_grammar.py) -> the robot's target; returns false when
  // it names nothing on the table.
  setGoal(goal) {
    if (!goal || !goal.action) return false;
    // Stop: the target is where the gripper comes to rest when commanded to stand still
    // (the lag's geometric series, clients/sim/table.py stop_target).
    const hold = () => {
      const dt = 0.02, alpha = dt / TABLE.TAU, k = (dt * (1 - alpha)) / alpha;
      this.target = [this.p[0] + this.v[0] * k, this.p[1] + this.v[1] * k]; this.kind = "stop";
    };
    const inside = (x, half) => clamp(x, -(half - MARGIN), half - MARGIN);
    switch (goal.action) {
      case "reach": {
        const o = this.findObject(goal);
        if (!o) return false;
        this.target = [o.x, o.y]; this.kind = "reach"; break;
      }
      case "move":
        this.target = [inside(this.p[0] + STEP_M * (goal.dx || 0), TABLE.HALF_X), inside(this.p[1] + STEP_M * (goal.dy || 0), TABLE.HALF_Y)];
        this.kind = "move"; break;
      case "region":
        if (!REGIONS[goal.region]) return false;
        this.target = [...REGIONS[goal.region]]; this.kind = "region"; break;
      case "stop": hold(); this.paused = null; break;
      case "wait": this.paused = {target: this.target, kind: this.kind, goal: this.goal}; hold(); break;
      case "resume":
        if (this.paused) { ({target: this.target, kind: this.kind} = this.paused); goal = this.paused.goal; this.paused = null; }
        break;
      case "faster": this.speed = Math.min(2.0, this.speed * 1.5); return true;
      case "slower": this.speed = Math.max(0.25, this.speed / 1.5); return true;
      case "restart": this.reset(); return true;
      default: return false;
    }
    this.goal = goal;
    return true;
  }

  distanceToTarget() { return Math.hypot(this.p[0] - this.target[0], this.p[1] - this.target[1]); }

  // The table as a chat hello's context map (models.world_grammar.Table.from_state): the
  // gripper, the objects and the goal, positions in steps of a move goal.
  contextMap() {
    const steps = (m) => Math.round((m / STEP_M) * 10) / 10;
    return {gripper: [steps(this.p[0]), steps(this.p[1])],
      objects: this.objects.map((o) => ({color: o.color, shape: o.shape, x: steps(o.x), y: steps(o.y)})),
      goal: this.kind === "stop" && this.goal.action === "stop" ? null : this.goal};
  }

  // The same in words, for a chat model that takes text context.
  describe() {
    const objects = this.objects.map((o) => `a ${o.color} ${o.shape} at (${(o.x / STEP_M).toFixed(0)}, ${(o.y / STEP_M).toFixed(0)})`);
    return `Objects on the table: ${objects.join(", ")}. The gripper is at (${(this.p[0] / STEP_M).toFixed(0)}, ` +
      `${(this.p[1] / STEP_M).toFixed(0)}), in steps; its goal: ${JSON.stringify(this.goal)}.`;
  }
}

// -- the plan: chunking.merge.merge_chunk and clients.action_buffer.ActionBuffer ---------------

export class ActionBuffer {
  constructor() { this.plan = null; this.history = []; this.holdingSince = null; }

  merge(actions, startTick, now) {
    if (this.plan && startTick < this.plan.chunkStart) return {took: false, firstTick: this.plan.firstTick, skipped: 0, seamJerk: null};
    const ranUntil = this.holdingSince === null ? now : Math.min(now, this.holdingSince);
    const skipped = Math.min(actions.length, Math.max(0, ranUntil - startTick));
    const firstTick = Math.max(startTick + skipped, now);
    this.plan = {actions: actions.slice(skipped), firstTick, chunkStart: startTick};
    let seamJerk = null;
    if (this.history.length >= 2 && this.plan.actions.length) {
      const [a2, a1] = this.history, a0 = this.plan.actions[0];
      seamJerk = Math.hypot(...a0.map((x, i) => x - 2 * a1[i] + a2[i]));
    }
    return {took: true, firstTick, skipped, seamJerk};
  }

  pop(now) {
    const i = this.plan ? now - this.plan.firstTick : -1;
    if (!this.plan || i < 0 || i >= this.plan.actions.length) {
      if (this.holdingSince === null) this.holdingSince = now;
      return null;
    }
    this.holdingSince = null;
    const action = this.plan.actions[i];
    this.history = [...this.history.slice(-1), action];
    return action;
  }

  recordHeld(action) { this.history = [...this.history.slice(-1), action]; }
}

const median = (xs) => { if (!xs.length) return null; const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

// -- the loop -----------------------------------------------------------------------------------

export class PolicyLoop {
  // options: {url, model, hz, strategy, futureState, injectMs, onEvent}
  constructor(table, options) {
    this.table = table;
    this.options = {hz: 50, strategy: "rtc", futureState: false, injectMs: 0, ...options};
    this.onEvent = options.onEvent || (() => {});
    this.resetStats();
    this.trail = []; // [{x, y, seam, chunk}]
    this.running = false;
  }

  resetStats() {
    this.stats = {ticks: 0, requests: 0, chunks: 0, underruns: 0, failures: 0, timeouts: 0, late: 0,
      d: [], batch: [], s: [], seamJerk: [], rtt: [], lateness: [], reactions: []};
  }

  summary() {
    const s = this.stats, last = (xs) => (xs.length ? xs[xs.length - 1] : null);
    return {strategy: this.strategyName(), inject_ms: this.options.injectMs, ticks: s.ticks, chunks: s.chunks,
      underruns: s.underruns, failures: s.failures, timeouts: s.timeouts,
      d_last: last(s.d), d_p50: median(s.d.slice(-32)), batch_size: last(s.batch), s_last: last(s.s),
      seam_jerk: s.seamJerk.length ? s.seamJerk.slice(-32).reduce((a, b) => a + b, 0) / Math.min(32, s.seamJerk.length) : null,
      rtt_ms_p50: median(s.rtt.slice(-32)), reaction_ms: last(s.reactions), tick_lateness_ms_p50: median(s.lateness.slice(-200)),
      connected: !!(this.ws && this.ws.readyState === 1 && this.ready)};
  }

  strategyName() { return this.options.strategy + (this.options.futureState ? "+future" : ""); }

  // Switch strategy or injected latency: a new session (the hello fixes the strategy).
  configure(changes) {
    Object.assign(this.options, changes);
    if (this.running) { this.stop(); this.start(); }
  }

  start() {
    this.running = true;
    this.buffer = new ActionBuffer();
    this.tick = 0; this.nextRequestId = 0; this.outstanding = null; this.report = null;
    this.nextRequestTick = 0; this.lastAction = null; this.started = false; this.arrived = [];
    this.resetStats();
    this.connect();
    const period = 1000 / this.options.hz;
    this.t0 = performance.now();
    const run = () => {
      if (!this.running) return;
      // A drift-free schedule: run every tick that is due (a late timer runs the ticks it
      // missed back to back), as clients.robot_loop.run_loops does.
      const due = Math.floor((performance.now() - this.t0) / period);
      while (this.tick <= due && this.running) {
        this.stats.lateness.push(performance.now() - (this.t0 + this.tick * period));
        this.step();
      }
      this.timer = setTimeout(run, Math.max(0, this.t0 + (this.tick) * period - performance.now()));
    };
    run();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    if (this.ws) { this.ws.onclose = null; this.ws.close(); this.ws = null; }
  }

  connect() {
    this.ready = false;
    const o = this.options;
    const ws = new WebSocket(o.url + (o.model ? `?model=${encodeURIComponent(o.model)}` : ""));
    this.ws = ws;
    this.session = (this.session || 0) + 1;
    const session = this.session;
    ws.onopen = () => ws.send(JSON.stringify({type: "hello", control_hz: o.hz, strategy: o.strategy, future_state: o.futureState}));
    ws.onmessage = (event) => {
      const m = JSON.parse(event.data);
      if (m.type === "ready") { this.ready = true; this.model = m.model; this.onEvent({type: "ready", message: m}); return; }
      if (m.type === "error" && m.code === "unsupported" && !this.ready && o.futureState) {
        // The model has no future-state rollout: real-time chunking without it, said so.
        o.futureState = false;
        this.onEvent({type: "unsupported", message: m});
        return;
      }
      const receivedAt = performance.now();
      // Injected latency: the reply is held as if the model had taken that much longer.
      const deliver = () => { if (session === this.session) this.arrived.push({...m, receivedAt: performance.now()}); };
      if (o.injectMs > 0) setTimeout(deliver, o.injectMs); else deliver();
      if (m.type === "error") this.onEvent({type: "error", message: m, at: receivedAt});
    };
    ws.onclose = (event) => {
      this.ready = false;
      this.onEvent({type: "closed", code: event.code, reason: event.reason});
      if (this.running && session === this.session) setTimeout(() => { if (this.running && session === this.session) this.reconnect(); }, 500);
    };
  }

  reconnect() { this.outstanding = null; this.report = null; this.connect(); }

  step() {
    const t = this.tick;
    for (const reply of this.arrived.splice(0)) this.accept(reply, t);
    if (this.outstanding && t - this.outstanding.tick >= 50) { // timeout_ticks: ask again
      this.outstanding = null; this.stats.timeouts++;
      this.session++; if (this.ws) { this.ws.onclose = null; this.ws.close(); } this.reconnect();
    }
    const state = this.table.state();
    if (this.ready && !this.outstanding && t >= this.nextRequestTick) {
      const request = {type: "observation", request_id: this.nextRequestId++, tick: t, state};
      if (this.report) request.report = this.report;
      this.outstanding = {id: request.request_id, tick: t, sentAt: performance.now()};
      this.ws.send(JSON.stringify(request));
      this.stats.requests++;
    }
    let action = this.buffer.pop(t), seam = false;
    if (action === null && this.started) {
      // The plan ran dry: the table's robot stands still (docs/table_task.md), as a
      // synchronous robot does while it waits for its next chunk.
      this.stats.underruns++;
      action = [0, 0];
      this.buffer.recordHeld(action);
    }
    if (this.pendingSeam !== undefined && this.pendingSeam <= t && action !== null) { seam = true; this.pendingSeam = undefined; }
    if (action !== null || this.started) { this.table.step(action, 1 / this.options.hz); this.lastAction = action; }
    this.watchReaction(t);
    this.trail.push({x: this.table.p[0], y: this.table.p[1], seam, chunk: this.stats.chunks, action, tick: t});
    if (this.trail.length > 400) this.trail.shift();
    this.tick++; this.stats.ticks++;
  }

  // Reaction time to a new goal (docs/table_task.md, "heading for the goal"): ticks from the
  // goal change until the gripper moves faster than 0.05 m/s within 45 degrees of the target.
  goalChanged() { this.goalTick = this.tick; }

  watchReaction(t) {
    if (this.goalTick === undefined || this.table.kind === "stop") return;
    const [vx, vy] = this.table.v, dx = this.table.target[0] - this.table.p[0], dy = this.table.target[1] - this.table.p[1];
    const speed = Math.hypot(vx, vy), distance = Math.hypot(dx, dy);
    if (distance < 0.04) { this.goalTick = undefined; return; }
    if (speed > 0.05 && (vx * dx + vy * dy) / (speed * distance) >= Math.cos(Math.PI / 4)) {
      this.stats.reactions.push(((t - this.goalTick) * 1000) / this.options.hz);
      this.goalTick = undefined;
    }
  }

  accept(reply, now) {
    if (!this.outstanding || reply.request_id !== this.outstanding.id) { this.stats.late++; return; }
    const sent = this.outstanding;
    if (reply.type === "error") { this.outstanding = null; this.stats.failures++; return; }
    if (reply.type !== "chunk") return;
    this.outstanding = null;
    const arrival = this.buffer.merge(reply.actions, reply.start_tick, now);
    if (!arrival.took) { this.stats.late++; return; }
    this.started = true;
    this.stats.chunks++;
    this.stats.d.push(now - sent.tick);
    this.stats.s.push(reply.s);
    const rtt = reply.receivedAt - sent.sentAt;
    this.stats.rtt.push(rtt);
    if (reply.timing && reply.timing.batch_size !== undefined) this.stats.batch.push(reply.timing.batch_size);
    if (arrival.seamJerk !== null) this.stats.seamJerk.push(arrival.seamJerk);
    this.pendingSeam = arrival.firstTick;
    this.report = {request_id: reply.request_id, tick_sent: sent.tick, tick_arrived: now,
      plan_start: arrival.firstTick - arrival.skipped, rtt_ms: Math.round(rtt * 1000) / 1000};
    this.nextRequestTick = arrival.firstTick - arrival.skipped + Math.max(1, reply.s);
  }
}

// -- drawing ------------------------------------------------------------------------------------

export function drawTable(canvas, table, loop) {
  const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  const sx = W / (2 * TABLE.HALF_X), sy = H / (2 * TABLE.HALF_Y);
  const X = (x) => (x + TABLE.HALF_X) * sx, Y = (y) => (TABLE.HALF_Y - y) * sy;
  g.fillStyle = "#f4efe6"; g.fillRect(0, 0, W, H);
  g.strokeStyle = "#d8cfbf"; g.lineWidth = 1;
  for (let x = -0.5; x <= 0.5001; x += 0.1) { g.beginPath(); g.moveTo(X(x), 0); g.lineTo(X(x), H); g.stroke(); }
  for (let y = -0.3; y <= 0.3001; y += 0.1) { g.beginPath(); g.moveTo(0, Y(y)); g.lineTo(W, Y(y)); g.stroke(); }
  const r = 0.035 * sx;
  for (const o of table.objects) {
    g.fillStyle = COLORS[o.color]; g.strokeStyle = COLORS[o.color]; g.lineWidth = r * 0.45;
    const cx = X(o.x), cy = Y(o.y);
    if (o.shape === "cube") g.fillRect(cx - r, cy - r, 2 * r, 2 * r);
    else if (o.shape === "ball") { g.beginPath(); g.arc(cx, cy, r, 0, 2 * Math.PI); g.fill(); }
    else { g.beginPath(); g.arc(cx, cy, r * 0.8, 0, 2 * Math.PI); g.stroke(); }
  }
  // The goal.
  if (table.kind !== "stop") {
    g.strokeStyle = "#333"; g.lineWidth = 1.5; g.setLineDash([4, 3]);
    g.beginPath(); g.arc(X(table.target[0]), Y(table.target[1]), r * 1.7, 0, 2 * Math.PI); g.stroke(); g.setLineDash([]);
  }
  // The trail, one shade per chunk, and the chunk seams (where a new chunk took over) as ticks.
  if (loop) {
    const trail = loop.trail;
    for (let i = 1; i < trail.length; i++) {
      g.strokeStyle = trail[i].chunk % 2 ? "#555" : "#9a9a9a"; g.lineWidth = 2;
      g.beginPath(); g.moveTo(X(trail[i - 1].x), Y(trail[i - 1].y)); g.lineTo(X(trail[i].x), Y(trail[i].y)); g.stroke();
    }
    g.fillStyle = "#e4572e";
    for (const point of trail) if (point.seam) { g.beginPath(); g.arc(X(point.x), Y(point.y), 3, 0, 2 * Math.PI); g.fill(); }
  }
  // The gripper.
  g.fillStyle = "#222"; g.beginPath(); g.arc(X(table.p[0]), Y(table.p[1]), r * 0.55, 0, 2 * Math.PI); g.fill();
  g.strokeStyle = "#fff"; g.lineWidth = 2; g.beginPath(); g.arc(X(table.p[0]), Y(table.p[1]), r * 0.55, 0, 2 * Math.PI); g.stroke();
}

// The commanded velocity over the last seconds, one line per axis, chunk seams as vertical
// lines: a seam that jumps (naive chunking under delay) shows as a step in the lines.
export function drawActions(canvas, loop) {
  const g = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  g.fillStyle = "#fff"; g.fillRect(0, 0, W, H);
  g.strokeStyle = "#eee"; g.beginPath(); g.moveTo(0, H / 2); g.lineTo(W, H / 2); g.stroke();
  if (!loop || !loop.trail.length) return;
  const trail = loop.trail, n = trail.length, X = (i) => (i / 400) * W + (W - (n / 400) * W);
  const Y = (a) => H / 2 - a * (H / 2 - 4);
  g.strokeStyle = "#e4572e"; g.lineWidth = 1; // seams: short ticks along the bottom edge
  for (let i = 0; i < n; i++) if (trail[i].seam) { g.beginPath(); g.moveTo(X(i), H - 10); g.lineTo(X(i), H); g.stroke(); }
  const colors = ["#1f77b4", "#2ca02c"];
  for (let axis = 0; axis < 2; axis++) {
    g.strokeStyle = colors[axis]; g.lineWidth = 1.5; g.beginPath();
    let pen = false;
    for (let i = 0; i < n; i++) {
      const a = trail[i].action;
      if (!a) { pen = false; continue; }
      if (pen) g.lineTo(X(i), Y(a[axis])); else { g.moveTo(X(i), Y(a[axis])); pen = true; }
    }
    g.stroke();
  }
  g.fillStyle = "#666"; g.font = "11px sans-serif";
  g.fillText("commanded velocity x (blue), y (green) over the last 8 s; chunk seams: orange ticks", 6, 12);
}
