/**
 * `cms-realtime/prometheus`: `rt.stats()` as Prometheus metrics, through
 * `prom-client` (an optional peer: only this entry point loads it). The
 * collectors read `rt.stats()` at each scrape, so they cost nothing between
 * scrapes and are never out of step with it. Names follow Centrifugo's
 * (`centrifugo_node_num_clients`, `…_client_connections_inflight{transport}`,
 * `…_client_recover{recovered}`), with the prefix `cms_realtime_`.
 *
 *   import { Registry } from 'prom-client'
 *   import { registerMetrics } from 'cms-realtime/prometheus'
 *   registerMetrics(rt, { registry })   // then serve registry.metrics() on your guarded /metrics
 *
 * Serving them is the app's: behind its own auth, or on an internal port.
 * The channel's routes never expose them.
 */
import { Counter, Gauge, register as globalRegistry, type Registry } from 'prom-client'
import type { RealtimeStats } from '../types'

export interface MetricsOptions {
  /** Where to register. Default: prom-client's global registry. */
  registry?: Registry
  /** Metric name prefix. Default `cms_realtime_`. */
  prefix?: string
}

/** What `registerMetrics` needs of `rt`: its stats (the core, the Koa and the Express handles all have them). */
export interface HasStats {
  stats(): RealtimeStats
}

type Source = () => RealtimeStats

/**
 * Register collectors for `rt` in `registry`; returns the function that
 * removes them again (for an `rt` that is closed while the registry lives on).
 */
export function registerMetrics(rt: HasStats, options: MetricsOptions = {}): () => void {
  const registry = options.registry ?? globalRegistry
  const prefix = options.prefix ?? 'cms_realtime_'
  if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(prefix)) throw new TypeError('cms-realtime: metrics "prefix" must be a valid Prometheus name prefix')
  // One stats() per scrape: a registry collects every metric in the same
  // turn, so the snapshot is dropped at the end of it.
  let cached: RealtimeStats | undefined
  const stats: Source = () => {
    if (cached === undefined) {
      cached = rt.stats()
      queueMicrotask(() => { cached = undefined })
    }
    return cached
  }
  const names: string[] = []
  type Read = (s: RealtimeStats) => number | Record<string, number>
  /** A gauge or a counter whose value is read from `rt.stats()` at each scrape (counters mirror the core's monotonic totals). */
  const metric = (Kind: typeof Gauge | typeof Counter, name: string, help: string, read: Read, label?: string): void => {
    names.push(prefix + name)
    new Kind({
      name: prefix + name, help, registers: [registry], labelNames: label === undefined ? [] : [label],
      collect(this: Gauge | Counter) {
        this.reset()
        const v = read(stats())
        const put = (labels: Record<string, string>, n: number): void => {
          if (this instanceof Gauge) this.set(labels, n)
          else this.inc(labels, n)
        }
        if (typeof v === 'number') put({}, v)
        else for (const [k, n] of Object.entries(v)) put({ [label!]: k }, n)
      },
    })
  }
  const gauge = (name: string, help: string, read: Read, label?: string): void => metric(Gauge, name, help, read, label)
  const counter = (name: string, help: string, read: Read, label?: string): void => metric(Counter, name, help, read, label)

  gauge('node_num_clients', 'Open client connections on this node, every transport.', (s) => s.transports.websocket + s.transports.sse + s.transports.poll)
  gauge('client_connections_inflight', 'Open client connections on this node, by transport.',
    (s) => ({ ...s.transports }), 'transport')
  gauge('node_num_subscriptions', 'Subscriptions held by this node\'s WebSocket connections.', (s) => s.subscriptions)
  gauge('node_num_topics', 'Topics with at least one subscriber on this node.', (s) => s.topics)
  gauge('websocket_enabled', '1 while WebSocket upgrades are accepted.', (s) => (s.webSocketEnabled ? 1 : 0))
  counter('events_published_total', 'Events published through this node.', (s) => s.eventsPublished)
  counter('events_delivered_total', 'Events written to clients of this node.', (s) => s.eventsDelivered)
  counter('events_dropped_total', 'Events not sent because their client was already closing.', (s) => s.drops)
  counter('client_slow_consumers_closed_total', 'Clients closed for falling behind (send buffer over maxBufferedBytes).', (s) => s.slowConsumersClosed)
  counter('client_refusals_total', 'Handshakes and requests refused, by reason.', (s) => numbers(s.refusals), 'reason')
  counter('client_diagnoses_total', 'WebSocket failures browsers reported that the server confirmed, by cause.', (s) => numbers(s.diagnoses), 'cause')
  counter('client_diagnoses_unconfirmed_total', 'Reports the server could not confirm, by claimed cause.', (s) => numbers(s.diagnosesUnconfirmed), 'cause')
  counter('client_recover_total', 'Subscriptions resumed with a cursor: recovered from history, or told to resync.',
    (s) => ({ yes: s.recovery.recovered, no: s.recovery.resynced }), 'recovered')
  counter('client_protocol_errors_total', 'Error frames sent for bad client frames.', (s) => s.protocolErrors)
  counter('sessions_ended_total', 'Connections ended by disconnect, revalidate or expiresAt.', (s) => s.sessionsEnded)
  counter('subscriptions_revoked_total', 'Subscriptions dropped by reauthorize.', (s) => s.subscriptionsRevoked)
  counter('errors_total', 'Exceptions caught from callbacks, the bus and listeners (logged, never fatal).', (s) => s.errors)
  // The bus's own figures (the Redis bus: connected, localPublishes, timeouts, fills, resyncs, rejectedMessages).
  gauge('bus_connected', '1 while the bus is connected (an in-memory bus always is).', (s) => (busField(s, 'connected') ?? 1))
  for (const [field, name, help] of BUS_COUNTERS) counter(name, help, (s) => busField(s, field) ?? 0)

  return () => {
    for (const name of names) registry.removeSingleMetric(name)
  }
}

const BUS_COUNTERS: ReadonlyArray<[string, string, string]> = [
  ['localPublishes', 'bus_local_publishes_total', 'Events delivered to this node only, because the bus did not answer in time.'],
  ['timeouts', 'bus_timeouts_total', 'Bus commands abandoned after their timeout.'],
  ['fills', 'bus_fills_total', 'Holes in a topic\'s live sequence filled from history.'],
  ['resyncs', 'bus_resyncs_total', 'Times this node told a topic\'s subscribers to resync.'],
  ['rejectedMessages', 'bus_rejected_messages_total', 'Bus messages that were not well-formed: dropped.'],
]

function busField(s: RealtimeStats, field: string): number | undefined {
  const v = (s.bus as Record<string, unknown> | undefined)?.[field]
  return typeof v === 'number' ? v : typeof v === 'boolean' ? Number(v) : undefined
}

function numbers(r: Partial<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [k, v] of Object.entries(r)) if (typeof v === 'number') out[k] = v
  return out
}
