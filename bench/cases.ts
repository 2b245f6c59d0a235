/**
 * The bench cases. Each one starts a fresh server process for one system and
 * a fresh client process, drives them over IPC and returns plain figures.
 */
import { spawn, type Peer } from './ipc'
import type { System } from './systems'

export interface Config {
  clients: number
  topics: number
  /** Events in the timed fan-out burst. */
  events: number
  /** One-at-a-time publishes for latency. */
  publishes: number
  /** Events in the selectivity burst (rotating over the topics). */
  selective: number
  /** Connections in the connections case. */
  connections: number
  /** Events in the long burst that checks event-loop delay (cms-realtime only). */
  longBurst: number
  runs: number
  systems: System[]
  /** Node flags for server processes (e.g. --cpu-prof). */
  serverFlags: string[]
  /** Write a heap snapshot of each server after its connections case into this directory. */
  heapSnapshotDir?: string
}

interface Started { server: Peer; client: Peer; port: number }
interface Waited { ok: boolean; received: number; first?: string; last?: string; cpuUs?: number; closed: number }
interface Measured { cpuUs: number; eldMaxMs: number; eldP99Ms: number }
interface Stats { slowConsumersClosed?: number; drops?: number }

async function start(system: System, cfg: Config): Promise<Started> {
  const server = spawn(`${system} server`, 'server.ts', [system], ['--expose-gc', ...cfg.serverFlags])
  const client = spawn('client', 'client.ts', [])
  try {
    const { port } = await server.call<{ port: number }>('start')
    return { server, client, port }
  } catch (err) {
    await Promise.all([server.stop(), client.stop()])
    throw err
  }
}

async function stop(s: Started): Promise<void> {
  await Promise.all([s.server.stop(), s.client.stop()])
}

async function connect(s: Started, system: System, n: number, topicsOf: string[][], concurrency: number, transport: 'ws' | 'sse' | 'poll' = 'ws'): Promise<{ open: number; errors: number; firstError: string; ms: number }> {
  const r = await s.client.call<{ open: number; errors: number; firstError: string; ms: number }>('connect', { system, port: s.port, n, topicsOf, concurrency, transport }, 300_000)
  if (r.errors > 0) console.error(`  ${system}: ${r.errors} connection errors, first: ${r.firstError}`)
  return r
}

/** Publish a burst and wait until the client counted `expected` events. */
async function burst(s: Started, topics: string[], count: number, expected: number, timeoutMs: number): Promise<{ ms: number; loopMs: number; firstMs: number; cpuUs: number; clientCpuUs: number; eldMaxMs: number; ok: boolean; received: number; closed: number }> {
  await s.client.call('expect', { count: expected })
  await s.server.call('mark')
  const b = await s.server.call<{ t0: string; loopMs: number; firstMs: number }>('burst', { topics, count })
  const w = await s.client.call<Waited>('wait', { timeoutMs }, timeoutMs + 10_000)
  const m = await s.server.call<Measured>('measure')
  const ms = w.ok ? Number(BigInt(w.last!) - BigInt(b.t0)) / 1e6 : NaN
  return { ms, loopMs: b.loopMs, firstMs: b.firstMs, cpuUs: m.cpuUs, clientCpuUs: w.cpuUs ?? NaN, eldMaxMs: m.eldMaxMs, ok: w.ok, received: w.received, closed: w.closed }
}

export interface FanoutRun {
  connectMs: number
  /** Burst of `events` to all clients: deliveries per second until the last client had the last event. */
  burstRate: number
  burstCpuUsPerDelivery: number
  /** Client CPU time / wall time during the burst (1 = a whole core: the client would be the bottleneck). */
  burstClientLoad: number
  burstServerLoad: number
  burstEldMaxMs: number
  latencyFirstP50: number
  latencyLastP50: number
  latencyLastP99: number
  /** Lone publish: clients / median publish→last-client time. */
  loneRate: number
  /** Server CPU µs per publish to a topic with clients/topics subscribers, and to one with all clients. */
  selectiveCpuUsPerPublish: number
  allCpuUsPerPublish: number
  slowConsumersClosed: number
}

/** Fan-out throughput, latency and selectivity on one set of `clients` connections. */
export async function fanout(system: System, cfg: Config): Promise<FanoutRun> {
  const s = await start(system, cfg)
  try {
    const topicsOf = Array.from({ length: cfg.topics }, (_, i) => ['all', `t${i}`])
    const c = await connect(s, system, cfg.clients, topicsOf, 100)
    if (c.open !== cfg.clients) throw new Error(`${system}: only ${c.open}/${cfg.clients} clients connected`)
    const n = cfg.clients
    await burst(s, ['all'], Math.min(50, cfg.events), Math.min(50, cfg.events) * n, 60_000) // warm-up (JIT)

    const b = await burst(s, ['all'], cfg.events, cfg.events * n, 60_000)
    if (!b.ok) throw new Error(`${system}: burst incomplete, ${b.received}/${cfg.events * n} events, ${b.closed} clients closed`)

    const first: number[] = []
    const last: number[] = []
    for (let k = 0; k < cfg.publishes; k++) {
      await s.client.call('expect', { count: n })
      const { t0 } = await s.server.call<{ t0: string }>('one', { topic: 'all' })
      const w = await s.client.call<Waited>('wait', { timeoutMs: 10_000 })
      if (!w.ok) throw new Error(`${system}: publish ${k} reached ${w.received}/${n} clients`)
      first.push(Number(BigInt(w.first!) - BigInt(t0)) / 1e6)
      last.push(Number(BigInt(w.last!) - BigInt(t0)) / 1e6)
    }

    const perTopic = Math.ceil(n / cfg.topics)
    const topics = Array.from({ length: cfg.topics }, (_, i) => `t${i}`)
    const sel = await burst(s, topics, cfg.selective, cfg.selective * perTopic, 60_000)
    if (!sel.ok) throw new Error(`${system}: selective burst incomplete, ${sel.received}/${cfg.selective * perTopic}`)

    const stats = await s.server.call<Stats>('stats')
    const lastP50 = percentile(last, 50)
    return {
      connectMs: c.ms,
      burstRate: (cfg.events * n) / (b.ms / 1000),
      burstCpuUsPerDelivery: b.cpuUs / (cfg.events * n),
      burstClientLoad: b.clientCpuUs / (b.ms * 1000),
      burstServerLoad: b.cpuUs / (b.ms * 1000),
      burstEldMaxMs: b.eldMaxMs,
      latencyFirstP50: percentile(first, 50),
      latencyLastP50: lastP50,
      latencyLastP99: percentile(last, 99),
      loneRate: n / (lastP50 / 1000),
      selectiveCpuUsPerPublish: sel.cpuUs / cfg.selective,
      allCpuUsPerPublish: b.cpuUs / cfg.events,
      slowConsumersClosed: stats.slowConsumersClosed ?? 0,
    }
  } finally {
    await stop(s)
  }
}

export interface ConnectionsRun {
  open: number
  errors: number
  perSecond: number
  rssPerConn: number
  heapPerConn: number
}

/** Open `connections` sockets (one topic each, over `topics` topics); memory per connection and open rate. */
export async function connections(system: System, cfg: Config): Promise<ConnectionsRun> {
  const s = await start(system, cfg)
  try {
    const before = await s.server.call<{ rss: number; heapUsed: number }>('memory')
    const topicsOf = Array.from({ length: cfg.topics }, (_, i) => [`t${i}`])
    const c = await connect(s, system, cfg.connections, topicsOf, 200)
    const after = await s.server.call<{ rss: number; heapUsed: number }>('memory')
    if (cfg.heapSnapshotDir !== undefined) await s.server.call('heapSnapshot', { dir: cfg.heapSnapshotDir }, 120_000)
    return {
      open: c.open,
      errors: c.errors,
      perSecond: c.open / (c.ms / 1000),
      rssPerConn: (after.rss - before.rss) / c.open,
      heapPerConn: (after.heapUsed - before.heapUsed) / c.open,
    }
  } finally {
    await stop(s)
  }
}

export interface LongBurstRun {
  events: number
  ok: boolean
  received: number
  ms: number
  rate: number
  loopMs: number
  /** The first publish of the loop, delivered at once to every client. */
  firstMs: number
  /** The app's share of the loop: building and serialising `events` payloads, timed alone. */
  appMs: number
  eldMaxMs: number
  cpuUsPerDelivery: number
  slowConsumersClosed: number
  clientsClosed: number
}

/** A bulk import: `longBurst` events in one loop to `clients` clients; the event loop must stay responsive. */
export async function longBurst(system: System, cfg: Config): Promise<LongBurstRun> {
  const s = await start(system, cfg)
  try {
    const c = await connect(s, system, cfg.clients, [['all']], 100)
    if (c.open !== cfg.clients) throw new Error(`${system}: only ${c.open}/${cfg.clients} clients connected`)
    const n = cfg.clients
    const { appMs } = await s.server.call<{ appMs: number }>('appCost', { count: cfg.longBurst })
    const b = await burst(s, ['all'], cfg.longBurst, cfg.longBurst * n, 120_000)
    const stats = await s.server.call<Stats>('stats')
    return {
      events: cfg.longBurst,
      ok: b.ok,
      received: b.received,
      ms: b.ms,
      rate: (cfg.longBurst * n) / (b.ms / 1000),
      loopMs: b.loopMs,
      firstMs: b.firstMs,
      appMs,
      eldMaxMs: b.eldMaxMs,
      cpuUsPerDelivery: b.cpuUs / (cfg.longBurst * n),
      slowConsumersClosed: stats.slowConsumersClosed ?? 0,
      clientsClosed: b.closed,
    }
  } finally {
    await stop(s)
  }
}

export interface SseRun {
  /** Burst of `events` to all clients over SSE: deliveries per second until the last client had the last event. */
  burstRate: number
  burstCpuUsPerDelivery: number
  latencyLastP50: number
  slowConsumersClosed: number
}

/**
 * cms-realtime's HTTP transports: the fan-out burst and lone-publish latency,
 * on `clients` event streams (`sse`) or long pollers (`poll`: events waiting
 * for a poller leave in one answer, and it polls again at once).
 */
export async function sseFanout(cfg: Config, transport: 'sse' | 'poll' = 'sse'): Promise<SseRun> {
  const s = await start('cms-realtime', cfg)
  try {
    const c = await connect(s, 'cms-realtime', cfg.clients, [['all']], 100, transport)
    if (c.open !== cfg.clients) throw new Error(`${transport}: only ${c.open}/${cfg.clients} clients connected (${c.firstError})`)
    const n = cfg.clients
    await burst(s, ['all'], Math.min(50, cfg.events), Math.min(50, cfg.events) * n, 60_000) // warm-up (JIT)
    const b = await burst(s, ['all'], cfg.events, cfg.events * n, 60_000)
    if (!b.ok) throw new Error(`${transport}: burst incomplete, ${b.received}/${cfg.events * n} events, ${b.closed} streams closed`)
    const last: number[] = []
    for (let k = 0; k < Math.min(50, cfg.publishes); k++) {
      await s.client.call('expect', { count: n })
      const { t0 } = await s.server.call<{ t0: string }>('one', { topic: 'all' })
      const w = await s.client.call<Waited>('wait', { timeoutMs: 10_000 })
      if (!w.ok) throw new Error(`${transport}: publish ${k} reached ${w.received}/${n} clients`)
      last.push(Number(BigInt(w.last!) - BigInt(t0)) / 1e6)
    }
    const stats = await s.server.call<Stats>('stats')
    return {
      burstRate: (cfg.events * n) / (b.ms / 1000),
      burstCpuUsPerDelivery: b.cpuUs / (cfg.events * n),
      latencyLastP50: percentile(last, 50),
      slowConsumersClosed: stats.slowConsumersClosed ?? 0,
    }
  } finally {
    await stop(s)
  }
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[i]!
}

export interface CmsRun {
  /** Bulk edit: `selective` events in one loop rotating over the 100 project topics. */
  bulkCpuUsPerDelivery: number
  /** Paced: the same count, 10 publishes per event-loop turn (each client gets at most one per turn). */
  pacedCpuUsPerDelivery: number
  /** Lone publish to one project topic (10 editors): publish → last of them. */
  loneP50: number
  loneP99: number
  /** Lone publish to one editor's notifications topic. */
  notifyP50: number
}

/**
 * The CMS-shaped case: `clients` editors, each on one of 100 `project:<id>`
 * topics (clients/100 per topic) and on its own `notifications:<user>`.
 */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 300))

export async function cms(system: System, cfg: Config): Promise<CmsRun> {
  const s = await start(system, cfg)
  try {
    const projects = Array.from({ length: 100 }, (_, i) => `project:${i}`)
    const topicsOf = Array.from({ length: cfg.clients }, (_, i) => [projects[i % 100]!, `notifications:u${i}`])
    const c = await connect(s, system, cfg.clients, topicsOf, 100)
    if (c.open !== cfg.clients) throw new Error(`${system}: only ${c.open}/${cfg.clients} editors connected`)
    const perTopic = cfg.clients / 100
    await burst(s, projects, 200, 200 * perTopic, 60_000) // warm-up (JIT)
    // Each measured phase starts from a quiet machine: right after a heavy
    // phase, the kernel's loopback work is cheaper for a while (the clients
    // are still awake), which flattered whichever system's previous phase was
    // heavier (raw ws's paced figure was 4.6 µs right after its bulk, 6.7 µs
    // after a pause; ours did not move).
    await settle()
    const bulk = await burst(s, projects, cfg.selective, cfg.selective * perTopic, 60_000)
    if (!bulk.ok) throw new Error(`${system}: bulk burst incomplete, ${bulk.received}/${cfg.selective * perTopic}`)
    // Paced: 10 publishes per turn, to 10 different projects.
    await settle()
    await s.client.call('expect', { count: cfg.selective * perTopic })
    await s.server.call('mark')
    await s.server.call('paced', { topics: projects, count: cfg.selective, perTurn: 10 }, 120_000)
    const pw = await s.client.call<Waited>('wait', { timeoutMs: 60_000 }, 70_000)
    const pm = await s.server.call<Measured>('measure')
    if (!pw.ok) throw new Error(`${system}: paced stream incomplete, ${pw.received}/${cfg.selective * perTopic}`)
    const lone: number[] = []
    for (let k = 0; k < cfg.publishes; k++) {
      await s.client.call('expect', { count: perTopic })
      const { t0 } = await s.server.call<{ t0: string }>('one', { topic: projects[k % 100] })
      const w = await s.client.call<Waited>('wait', { timeoutMs: 10_000 })
      if (!w.ok) throw new Error(`${system}: lone publish ${k} reached ${w.received}/${perTopic}`)
      lone.push(Number(BigInt(w.last!) - BigInt(t0)) / 1e6)
    }
    const notify: number[] = []
    for (let k = 0; k < Math.min(50, cfg.publishes); k++) {
      await s.client.call('expect', { count: 1 })
      const { t0 } = await s.server.call<{ t0: string }>('one', { topic: `notifications:u${k}` })
      const w = await s.client.call<Waited>('wait', { timeoutMs: 10_000 })
      if (!w.ok) throw new Error(`${system}: notification ${k} not received`)
      notify.push(Number(BigInt(w.last!) - BigInt(t0)) / 1e6)
    }
    return {
      bulkCpuUsPerDelivery: bulk.cpuUs / (cfg.selective * perTopic),
      pacedCpuUsPerDelivery: pm.cpuUs / (cfg.selective * perTopic),
      loneP50: percentile(lone, 50),
      loneP99: percentile(lone, 99),
      notifyP50: percentile(notify, 50),
    }
  } finally {
    await stop(s)
  }
}

export interface StormRun {
  /** `clients` clients (re)connecting at once, each naming 2 topics: ms until the last is subscribed. */
  ms: number
  /** cms-realtime only: the same with `subscribe` frames after the 101 (before handshake topics). */
  framesMs?: number
}

/** A reconnect storm after a deploy: every client at once. */
export async function storm(system: System, cfg: Config): Promise<StormRun> {
  const once = async (frames: boolean): Promise<number> => {
    const s = await start(system, cfg)
    try {
      const topicsOf = Array.from({ length: cfg.clients }, (_, i) => [`project:${i % 100}`, `notifications:u${i}`])
      await s.client.call('connect', { system, port: s.port, n: 50, topicsOf, concurrency: 50, frames }, 60_000) // warm-up
      await s.client.call('closeAll')
      const r = await s.client.call<{ open: number; ms: number }>('connect', { system, port: s.port, n: cfg.clients, topicsOf, concurrency: cfg.clients, frames }, 300_000)
      if (r.open !== cfg.clients) throw new Error(`${system}: only ${r.open}/${cfg.clients} reconnected`)
      return r.ms
    } finally {
      await stop(s)
    }
  }
  const ms = await once(false)
  return system === 'cms-realtime' ? { ms, framesMs: await once(true) } : { ms }
}
