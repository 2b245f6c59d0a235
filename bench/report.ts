/** Medians, spreads and ratios of the bench runs, and the printed table. */
import type { CmsRun, ConnectionsRun, FanoutRun, LongBurstRun, SseRun, StormRun } from './cases'
import type { System } from './systems'

export interface Spread { median: number; min: number; max: number }

interface Metric {
  key: string
  label: string
  /** Which way is better, for the reader of the ratio. */
  better: 'higher' | 'lower'
  digits: number
  /** The figure, from the fan-out runs or from the connection runs. */
  fan?: (f: FanoutRun) => number
  conn?: (c: ConnectionsRun) => number
}

export const METRICS: Metric[] = [
  { key: 'burstRate', label: 'burst fan-out, deliveries/s', better: 'higher', digits: 0, fan: (f) => f.burstRate },
  { key: 'burstCpuUs', label: 'burst: server CPU µs/delivery', better: 'lower', digits: 2, fan: (f) => f.burstCpuUsPerDelivery },
  { key: 'burstServerLoad', label: 'burst: server CPU load (1 = core)', better: 'lower', digits: 2, fan: (f) => f.burstServerLoad },
  { key: 'burstClientLoad', label: 'burst: client CPU load (1 = core)', better: 'lower', digits: 2, fan: (f) => f.burstClientLoad },
  { key: 'loneRate', label: 'lone publish, deliveries/s', better: 'higher', digits: 0, fan: (f) => f.loneRate },
  { key: 'firstP50', label: 'publish→first client p50, ms', better: 'lower', digits: 3, fan: (f) => f.latencyFirstP50 },
  { key: 'lastP50', label: 'publish→last client p50, ms', better: 'lower', digits: 2, fan: (f) => f.latencyLastP50 },
  { key: 'lastP99', label: 'publish→last client p99, ms', better: 'lower', digits: 2, fan: (f) => f.latencyLastP99 },
  { key: 'selectiveUs', label: 'selective burst: CPU µs/publish, 1 topic of 100', better: 'lower', digits: 1, fan: (f) => f.selectiveCpuUsPerPublish },
  { key: 'allUs', label: 'burst: CPU µs/publish, all clients', better: 'lower', digits: 1, fan: (f) => f.allCpuUsPerPublish },
  { key: 'selectivity', label: 'selective ÷ all-clients burst, CPU per publish', better: 'lower', digits: 3, fan: (f) => f.selectiveCpuUsPerPublish / f.allCpuUsPerPublish },
  { key: 'connRate', label: 'connections opened/s', better: 'higher', digits: 0, conn: (c) => c.perSecond },
  { key: 'rssPerConn', label: 'RSS per connection, KB', better: 'lower', digits: 1, conn: (c) => c.rssPerConn / 1024 },
  { key: 'heapPerConn', label: 'heap per connection, KB', better: 'lower', digits: 1, conn: (c) => c.heapPerConn / 1024 },
  { key: 'connErrors', label: 'connection errors', better: 'lower', digits: 0, conn: (c) => c.errors },
]

export type Summary = Record<string, Partial<Record<System, Spread>>>

export function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]! }
}

export function summarise(fan: Record<string, FanoutRun[]>, conns: Record<string, ConnectionsRun[]>, systems: System[]): Summary {
  const out: Summary = {}
  for (const m of METRICS) {
    const row: Partial<Record<System, Spread>> = {}
    for (const s of systems) {
      const values = m.fan !== undefined ? (fan[s] ?? []).map(m.fan) : (conns[s] ?? []).map(m.conn!)
      if (values.length > 0) row[s] = spread(values)
    }
    out[m.key] = row
  }
  return out
}

function fmt(v: number, digits: number): string {
  if (!Number.isFinite(v)) return 'n/a'
  return digits === 0 ? Math.round(v).toLocaleString('en-US') : v.toFixed(digits)
}

function cell(s: Spread | undefined, digits: number, runs: boolean): string {
  if (s === undefined) return ''
  const med = fmt(s.median, digits)
  return runs && s.min !== s.max ? `${med} (${fmt(s.min, digits)}–${fmt(s.max, digits)})` : med
}

/** Markdown table: one row per metric, one column per system, then cms-realtime ÷ each baseline. */
export function table(summary: Summary, systems: System[]): string {
  const others = systems.filter((s) => s !== 'cms-realtime')
  const ours = systems.includes('cms-realtime')
  const head = ['metric (median, min–max)', ...systems, ...(ours ? others.map((o) => `÷ ${o}`) : [])]
  const rows = [head, head.map(() => '---')]
  for (const m of METRICS) {
    const row = summary[m.key] ?? {}
    const ratios = ours
      ? others.map((o) => {
          const a = row['cms-realtime']?.median ?? NaN
          const b = row[o]?.median ?? NaN
          return b === 0 ? (a === 0 ? '=' : 'n/a') : `${(a / b).toFixed(2)}×`
        })
      : []
    rows.push([`${m.label} (${m.better} is better)`, ...systems.map((s) => cell(row[s], m.digits, true)), ...ratios])
  }
  return rows.map((r) => `| ${r.join(' | ')} |`).join('\n')
}

export function longBurstLine(l: LongBurstRun): string {
  return (
    `${l.events.toLocaleString('en-US')}-event burst: ${l.ok ? 'complete' : `INCOMPLETE (${l.received} events)`}, ` +
    `${fmt(l.rate, 0)} deliveries/s, publish loop ${l.loopMs.toFixed(1)} ms (first event ${l.firstMs.toFixed(1)} ms; building + JSON.stringify of the data alone ${l.appMs.toFixed(1)} ms), event-loop delay max ${l.eldMaxMs.toFixed(1)} ms, ` +
    `${l.cpuUsPerDelivery.toFixed(2)} µs CPU/delivery, slow consumers closed ${l.slowConsumersClosed}`
  )
}

export function printTable(summary: Summary, systems: System[], long: LongBurstRun | null): void {
  console.log('\n' + table(summary, systems))
  if (long !== null) console.log('\ncms-realtime ' + longBurstLine(long))
}

/** The SSE fallback's figures, each beside cms-realtime's WebSocket figure from the same runs. */
export function sseLine(sse: SseRun[], ws: FanoutRun[], clients: number, what = 'SSE fallback', unit = 'streams'): string {
  const med = (xs: number[]): number => (xs.length === 0 ? NaN : spread(xs).median)
  const pair = (a: number, b: number, digits: number, unit: string): string =>
    `${fmt(a, digits)} ${unit}${Number.isFinite(b) ? ` (${(a / b).toFixed(2)}× the WebSocket path)` : ''}`
  return (
    `cms-realtime ${what}, ${clients.toLocaleString('en-US')} ${unit} (medians of ${sse.length}): ` +
    `burst ${pair(med(sse.map((r) => r.burstRate)), med(ws.map((r) => r.burstRate)), 0, 'deliveries/s')}, ` +
    `${pair(med(sse.map((r) => r.burstCpuUsPerDelivery)), med(ws.map((r) => r.burstCpuUsPerDelivery)), 2, 'µs server CPU/delivery')}, ` +
    `publish→last client p50 ${pair(med(sse.map((r) => r.latencyLastP50)), med(ws.map((r) => r.latencyLastP50)), 2, 'ms')}, ` +
    `slow consumers closed ${sse.reduce((n, r) => n + r.slowConsumersClosed, 0)}`
  )
}

const CMS_ROWS: Array<{ label: string; digits: number; of: (r: CmsRun) => number; target?: string }> = [
  { label: 'bulk edit burst (events in one loop over 100 projects): server CPU µs/delivery', digits: 2, of: (r) => r.bulkCpuUsPerDelivery, target: '≤ 0.25× ws' },
  { label: 'paced (10 publishes per turn): server CPU µs/delivery', digits: 2, of: (r) => r.pacedCpuUsPerDelivery, target: '≤ 1.0× ws' },
  { label: 'lone publish to a project → its last editor, p50 ms', digits: 3, of: (r) => r.loneP50 },
  { label: 'lone publish to a project → its last editor, p99 ms', digits: 3, of: (r) => r.loneP99, target: '≤ 1.0× ws' },
  { label: "lone publish to an editor's notifications, p50 ms", digits: 3, of: (r) => r.notifyP50 },
]

/** The CMS-shaped case: medians, and cms-realtime's ratio to each baseline (lower is better everywhere). */
export function cmsTable(runs: Record<string, CmsRun[]>, systems: System[], clients: number): string {
  const others = systems.filter((s) => s !== 'cms-realtime')
  const lines = [
    `CMS-shaped: ${clients.toLocaleString('en')} editors, each on one of 100 projects and its own notifications topic (medians; lower is better)`,
    '',
    `| metric | ${systems.join(' | ')} | ${others.map((o) => `÷ ${o}`).join(' | ')} | target |`,
    `| --- | ${systems.map(() => '---').join(' | ')} | ${others.map(() => '---').join(' | ')} | --- |`,
  ]
  for (const row of CMS_ROWS) {
    const med: Partial<Record<System, number>> = {}
    for (const s of systems) if (runs[s] !== undefined) med[s] = spread(runs[s]!.map(row.of)).median
    const ours = med['cms-realtime']
    const ratios = others.map((o) => (ours === undefined || med[o] === undefined ? '' : `${(ours / med[o]!).toFixed(2)}×`))
    lines.push(`| ${row.label} | ${systems.map((s) => (med[s] === undefined ? '' : med[s]!.toFixed(row.digits))).join(' | ')} | ${ratios.join(' | ')} | ${row.target ?? ''} |`)
  }
  return lines.join('\n')
}

/** The reconnect storm: every client at once, time until all are subscribed again (medians). */
export function stormLine(runs: Record<string, StormRun[]>, systems: System[], clients: number): string {
  const med = (xs: number[]): number => spread(xs).median
  const parts = systems.filter((s) => runs[s] !== undefined).map((s) => `${s} ${med(runs[s]!.map((r) => r.ms)).toFixed(0)} ms`)
  const ours = runs['cms-realtime']
  const frames = ours === undefined ? '' : `; cms-realtime with subscribe frames after the 101 (before this round): ${med(ours.map((r) => r.framesMs!)).toFixed(0)} ms`
  const ws = runs.ws === undefined || ours === undefined ? '' : ` (${(med(ours.map((r) => r.ms)) / med(runs.ws.map((r) => r.ms))).toFixed(2)}× ws)`
  return `reconnect storm, ${clients.toLocaleString('en')} clients at once (2 topics each), until all are subscribed: ${parts.join(', ')}${ws}${frames}`
}
