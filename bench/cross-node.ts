/**
 * The cross-node case: one node publishes, clients sit on two other nodes,
 * all three share one Redis (127.0.0.1:6379, or BENCH_REDIS_URL).
 * cms-realtime's RedisBus against Socket.IO's Redis adapter (pub/sub) and
 * its Streams adapter, each in its own processes: how many events/s one node
 * can publish to subscribers on the others, and publish→receive latency.
 */
import { randomBytes } from 'node:crypto'
import { spawn, type Peer } from './ipc'
import { percentile } from './cases'

export const CLUSTERS = ['cms-realtime', 'socket.io', 'socket.io-streams'] as const
export type Cluster = (typeof CLUSTERS)[number]

export interface CrossNodeConfig {
  /** Clients on each of the two receiving nodes. */
  perNode: number
  /** Events in the throughput burst. */
  events: number
  /** Lone publishes for latency. */
  publishes: number
  /** Events of the steady stream at 1,000 ev/s (latency under a real load), and of the 24,000 ev/s offered one. */
  paced: number
  offered: number
}

/** Offered rates: the steady stream's latency, and the previous bus's ceiling, delivered in full or not. */
const PACED_PER_SECOND = 1000
const OFFERED_PER_SECOND = 24_000

export interface CrossNodeRun {
  /** Events per second published on one node and received by every client on the two others. */
  eventsPerSecond: number
  /** Lone publish → last client (of both receiving nodes), ms. */
  latencyP50: number
  latencyP99: number
  /** cms-realtime: publishes that went local (Redis healthy: must be 0), and resyncs each client got (one topic: its node's bus resyncs). */
  localPublishes?: number
  resyncsPerClient?: number
  /** At a steady 1,000 ev/s: publish → last client of both receiving nodes, per event, ms. */
  pacedP50: number
  pacedP99: number
  /** 24,000 ev/s offered: every event reached every client, and the rate they arrived at. */
  offeredInFull: boolean
  offeredDelivered: number
}

interface Waited { ok: boolean; received: number; first?: string; last?: string }

export async function crossNode(cluster: Cluster, cfg: CrossNodeConfig): Promise<CrossNodeRun> {
  const url = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
  const system = cluster === 'cms-realtime' ? 'cms-realtime' : 'socket.io'
  const args = [system, '--redis', url, '--prefix', `bench-${randomBytes(3).toString('hex')}:`, '--adapter', cluster === 'socket.io-streams' ? 'streams' : 'pubsub']
  const servers: Peer[] = [0, 1, 2].map((i) => spawn(`${cluster} node ${i}`, 'server.ts', args))
  const clients: Peer[] = [0, 1].map((i) => spawn(`client ${i}`, 'client.ts', []))
  try {
    const ports = await Promise.all(servers.map((s) => s.call<{ port: number }>('start').then((r) => r.port)))
    const publisher = servers[0]
    for (let i = 0; i < 2; i++) {
      const r = await clients[i]!.call<{ open: number }>('connect', { system, port: ports[i + 1], n: cfg.perNode, topicsOf: [['x']], concurrency: 50 }, 120_000)
      if (r.open !== cfg.perNode) throw new Error(`${cluster}: only ${r.open}/${cfg.perNode} clients on node ${i + 1}`)
    }
    // The receiving nodes subscribe to Redis when their first client joins: let that settle.
    await new Promise((r) => setTimeout(r, 300))
    const everyone = (count: number): Promise<unknown> => Promise.all(clients.map((c) => c.call('expect', { count })))
    const waitAll = (timeoutMs: number) => Promise.all(clients.map((c) => c.call<Waited>('wait', { timeoutMs }, timeoutMs + 10_000)))

    // Warm-up (JIT, Redis script cache).
    await everyone(50 * cfg.perNode)
    await publisher!.call('burst', { topics: ['x'], count: 50 })
    if (!(await waitAll(30_000)).every((w) => w.ok)) throw new Error(`${cluster}: warm-up incomplete`)

    const last: number[] = []
    for (let k = 0; k < cfg.publishes; k++) {
      await everyone(cfg.perNode)
      const { t0 } = await publisher!.call<{ t0: string }>('one', { topic: 'x' })
      const w = await waitAll(10_000)
      if (!w.every((x) => x.ok)) throw new Error(`${cluster}: publish ${k} did not reach every client`)
      last.push(Math.max(...w.map((x) => Number(BigInt(x.last!) - BigInt(t0)) / 1e6)))
    }

    await everyone(cfg.events * cfg.perNode)
    const { t0 } = await publisher!.call<{ t0: string }>('burst', { topics: ['x'], count: cfg.events })
    const w = await waitAll(120_000)
    if (!w.every((x) => x.ok)) throw new Error(`${cluster}: burst incomplete: ${w.map((x) => x.received).join(', ')} of ${cfg.events * cfg.perNode}`)
    const ms = Math.max(...w.map((x) => Number(BigInt(x.last!) - BigInt(t0)) / 1e6))
    // After the saturated burst (so a backlog of these cannot slow it): a steady stream at `perSecond`: per event, when it was published and when the last client had it.
    const stream = async (perSecond: number, count: number) => {
      await Promise.all(clients.map((c) => c.call('expect', { count: count * cfg.perNode, track: true })))
      const { times } = await publisher!.call<{ times: number[] }>('rate', { topic: 'x', count, perSecond }, 120_000)
      const w = await waitAll(60_000)
      const got = await Promise.all(clients.map((c) => c.call<{ arrivals: number[] }>('arrivals')))
      const at = times.map((_t, i) => Math.max(...got.map((g) => g.arrivals[i] ?? Infinity)))
      const inFull = w.every((x) => x.ok)
      const delivered = got.reduce((n, g) => Math.min(n, g.arrivals.length), count)
      return { inFull, latency: times.map((t, i) => at[i]! - t).filter(Number.isFinite), perSecond: delivered / ((Math.max(...at.filter(Number.isFinite)) - times[0]!) / 1000) }
    }
    const paced = await stream(PACED_PER_SECOND, cfg.paced)
    if (!paced.inFull) throw new Error(`${cluster}: the 1,000 ev/s stream did not reach every client`)
    const offered = await stream(OFFERED_PER_SECOND, cfg.offered)

    const run: CrossNodeRun = {
      eventsPerSecond: cfg.events / (ms / 1000), latencyP50: percentile(last, 50), latencyP99: percentile(last, 99),
      pacedP50: percentile(paced.latency, 50), pacedP99: percentile(paced.latency, 99), offeredInFull: offered.inFull, offeredDelivered: offered.perSecond,
    }
    if (cluster === 'cms-realtime') {
      const bus = await Promise.all(servers.map((s) => s.call<{ bus?: { localPublishes?: number; resyncs?: number } }>('stats').then((x) => x.bus ?? {})))
      run.localPublishes = bus.reduce((n, b) => n + (b.localPublishes ?? 0), 0)
      run.resyncsPerClient = Math.max(...bus.slice(1).map((b) => b.resyncs ?? 0))
    }
    return run
  } finally {
    await Promise.all([...servers, ...clients].map((p) => p.stop()))
  }
}

/** The printed lines: medians per cluster, and cms-realtime's ratio to each Socket.IO adapter. */
export function crossNodeLines(runs: Partial<Record<Cluster, CrossNodeRun[]>>, cfg: CrossNodeConfig): string[] {
  const med = (c: Cluster, k: 'eventsPerSecond' | 'latencyP50' | 'latencyP99' | 'pacedP50' | 'pacedP99' | 'offeredDelivered'): number => percentile((runs[c] ?? []).map((r) => r[k]), 50)
  const out = [`cross-node (publish on one node, ${cfg.perNode} clients on each of two others, one Redis):`]
  for (const c of CLUSTERS) {
    if (runs[c] === undefined) continue
    const health = c === 'cms-realtime' ? `; local-only publishes ${(runs[c] ?? []).reduce((n, r) => n + (r.localPublishes ?? 0), 0)}, resyncs per client ${Math.max(...(runs[c] ?? []).map((r) => r.resyncsPerClient ?? 0))} (Redis healthy: both 0)` : ''
    out.push(`  ${c}: ${med(c, 'eventsPerSecond').toFixed(0)} events/s; publish→last client p50 ${med(c, 'latencyP50').toFixed(2)} ms, p99 ${med(c, 'latencyP99').toFixed(2)} ms${health}`)
    const full = (runs[c] ?? []).every((r) => r.offeredInFull)
    out.push(`    at ${PACED_PER_SECOND} ev/s (${cfg.paced} events): publish→last client p50 ${med(c, 'pacedP50').toFixed(2)} ms, p99 ${med(c, 'pacedP99').toFixed(2)} ms; ` +
      `${OFFERED_PER_SECOND} ev/s offered (${cfg.offered} events): ${full ? 'delivered in full' : 'NOT delivered in full'}, at ${med(c, 'offeredDelivered').toFixed(0)} ev/s`)
  }
  for (const c of ['socket.io', 'socket.io-streams'] as const) {
    if (runs[c] === undefined || runs['cms-realtime'] === undefined) continue
    out.push(`  cms-realtime ÷ ${c}: events/s ${(med('cms-realtime', 'eventsPerSecond') / med(c, 'eventsPerSecond')).toFixed(2)}×, ` +
      `p50 ${(med('cms-realtime', 'latencyP50') / med(c, 'latencyP50')).toFixed(2)}×, p99 ${(med('cms-realtime', 'latencyP99') / med(c, 'latencyP99')).toFixed(2)}×; ` +
      `at ${PACED_PER_SECOND} ev/s p50 ${(med('cms-realtime', 'pacedP50') / med(c, 'pacedP50')).toFixed(2)}×, p99 ${(med('cms-realtime', 'pacedP99') / med(c, 'pacedP99')).toFixed(2)}× (latency: lower is better)`)
  }
  return out
}
