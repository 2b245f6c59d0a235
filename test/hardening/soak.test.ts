/**
 * Churn soak (issue #8): clients over WebSocket and SSE connect, subscribe,
 * drop abruptly (no close frame, a reset stream) and come back with their
 * cursors while events flow. Every event carries a per-topic sequence
 * number; each client checks its topics across all its connections: every
 * event exactly once and in order, and a gap only right after a `resync`.
 * About a minute under CI=true (SOAK_MS to change), 15 s otherwise.
 */
import { once } from 'node:events'
import { get, type ClientRequest } from 'node:http'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import WebSocket from 'ws'
import { MemoryBus } from '../../lib/bus/memory'
import { encodeCursors } from '../../lib/client/cursor-vector'
import { PROTOCOL } from '../../lib/types'
import { fixture, type Fixture } from '../helpers/fixture'

const SOAK_MS = Number(process.env.SOAK_MS ?? (process.env.CI === 'true' ? 60_000 : 15_000))
const CLIENTS = 40
const TOPICS = ['projects', 'project:1', 'project:2', 'project:3', 'items:x', 'comments']
jest.setTimeout(SOAK_MS + 60_000)

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void
const heap = () => { gc(); gc(); return process.memoryUsage().heapUsed }

interface Frame { op: string; topic?: string; id?: string; data?: { seq: number }; cursor?: string }

/** One editor's view of its topics, across all of its connections. */
class Virtual {
  readonly cursor = new Map<string, string>()
  readonly last = new Map<string, number>()
  /** Topics told to resync and not yet given an event since: their state is refetched, not replayed. */
  readonly resynced = new Set<string>()
  events = 0
  duplicates = 0
  reorders = 0
  silentGaps = 0
  resyncs = 0
  connections = 0
  /** What went wrong, and the frames just before it. */
  readonly log: string[] = []
  private readonly trail: string[] = []

  constructor(readonly topics: string[], readonly sse: boolean) {}

  frame(f: Frame): void {
    this.trail.push(`${this.connections}:${f.op} ${f.topic ?? ''} ${f.data?.seq ?? f.cursor ?? ''}`)
    if (this.trail.length > 20) this.trail.shift()
    if (f.op === 'subscribed' && f.cursor !== undefined && !this.cursor.has(f.topic!)) this.cursor.set(f.topic!, f.cursor)
    if (f.op === 'subscribed' && f.cursor !== undefined && this.resynced.has(f.topic!)) this.cursor.set(f.topic!, f.cursor)
    if (f.op === 'resync') {
      this.resyncs++
      this.resynced.add(f.topic!)
    }
    if (f.op !== 'event') return
    const topic = f.topic!
    const seq = f.data!.seq
    const last = this.last.get(topic)
    this.events++
    if (last !== undefined) {
      if (seq === last) {
        this.duplicates++
        this.log.push(`duplicate ${topic} #${seq} (${this.sse ? 'sse' : 'ws'}, connection ${this.connections}) after: ${this.trail.slice(-6).join(' | ')}`)
      }
      else if (seq < last) this.reorders++
      else if (seq > last + 1 && !this.resynced.has(topic)) this.silentGaps++
    }
    this.resynced.delete(topic)
    if (last === undefined || seq > last) this.last.set(topic, seq)
    this.cursor.set(topic, f.id!)
  }
}

let f: Fixture
afterAll(async () => { await f?.close() })

test(`churn: ${CLIENTS} clients dropping and recovering for ${SOAK_MS / 1000} s: no duplicate, no reorder, no gap without resync; heap back near baseline`, async () => {
  // A short history, so clients away longest need `resync` and that path is churned too.
  f = await fixture({ bus: new MemoryBus({ historySize: 60 }), maxConnectionsPerUser: 1000 })
  const base = heap()
  const seq = new Map(TOPICS.map((t) => [t, 0]))
  let published = 0
  let running = true
  const stopAt = Date.now() + SOAK_MS

  // ~150 events/s over six topics, in small bursts.
  const publisher = (async () => {
    while (Date.now() < stopAt) {
      for (let i = 0; i < 3; i++) {
        const topic = TOPICS[Math.floor(Math.random() * TOPICS.length)]!
        const n = seq.get(topic)! + 1
        seq.set(topic, n)
        await f.rt.publish(topic, 'tick', { seq: n })
        published++
      }
      await new Promise((r) => setTimeout(r, 20))
    }
    running = false
  })()

  const clients = Array.from({ length: CLIENTS }, (_x, i) => {
    const topics = TOPICS.filter(() => Math.random() < 0.4)
    return new Virtual(topics.length > 0 ? topics : ['projects'], i % 4 === 3)
  })

  /** One connection's life: open with the cursors, stay a while, drop abruptly. `final` stays until told. */
  async function session(v: Virtual, final: { until?: Promise<void> } = {}): Promise<void> {
    v.connections++
    // A dropped connection's late frames are ignored, as the browser client does.
    let alive = true
    const frame = (fr: Frame) => { if (alive) v.frame(fr) }
    const stay = final.until ?? new Promise<void>((r) => setTimeout(r, 200 + Math.random() * 1800))
    if (v.sse) {
      const since = encodeCursors(v.topics.map((t) => v.cursor.get(t)))
      const url = `${f.srv.base}/realtime/events?topics=${v.topics.join(',')}${v.cursor.size > 0 ? `&since=${encodeURIComponent(since)}` : ''}`
      let req: ClientRequest | undefined
      await new Promise<void>((resolve) => {
        req = get(url, (res) => {
          let buf = ''
          res.setEncoding('utf8')
          res.on('data', (chunk: string) => {
            buf += chunk
            let at: number
            while ((at = buf.indexOf('\n\n')) >= 0) {
              const data = buf.slice(0, at).split('\n').find((l) => l.startsWith('data: '))
              buf = buf.slice(at + 2)
              if (data !== undefined) frame(JSON.parse(data.slice(6)) as Frame)
            }
          })
          res.on('error', () => {})
          resolve()
        })
        req.on('error', () => resolve())
      })
      await stay
      alive = false
      req?.destroy() // abrupt: the server learns from the reset
      return
    }
    const ws = new WebSocket(`ws://127.0.0.1:${f.srv.port}/realtime`, PROTOCOL)
    ws.on('message', (d) => frame(JSON.parse(d.toString()) as Frame))
    ws.on('error', () => {})
    try {
      await once(ws, 'open')
    } catch {
      return
    }
    for (const topic of v.topics) {
      const since = v.cursor.get(topic)
      ws.send(JSON.stringify(since === undefined ? { op: 'subscribe', topic } : { op: 'subscribe', topic, since }))
    }
    await stay
    alive = false
    ws.terminate() // abrupt: no close frame
  }

  let release: () => void = () => {}
  const finalPhase = new Promise<void>((r) => { release = r })
  const loops = clients.map(async (v) => {
    while (running) {
      await session(v)
      // Mostly back at once; sometimes away long enough that history (60 per topic) cannot cover the gap.
      await new Promise((r) => setTimeout(r, Math.random() < 0.08 ? 3000 + Math.random() * 1500 : Math.random() * 400))
    }
    await session(v, { until: finalPhase }) // the last connection stays, to collect the tail
  })

  await publisher
  // Every client has reconnected for good and received the last event of
  // each of its topics, or was told to resync it (then it refetches).
  const caughtUp = (v: Virtual, t: string) => seq.get(t) === 0 || v.last.get(t) === seq.get(t) || v.resynced.has(t)
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline && !clients.every((v) => v.topics.every((t) => caughtUp(v, t)))) {
    await new Promise((r) => setTimeout(r, 50))
  }
  release()
  await Promise.all(loops)

  const sum = (k: 'events' | 'duplicates' | 'reorders' | 'silentGaps' | 'resyncs' | 'connections') => clients.reduce((n, v) => n + v[k], 0)
  await new Promise((r) => setTimeout(r, 300))
  const after = heap()
  console.log(
    `soak ${SOAK_MS / 1000} s: ${sum('connections')} connections churned (${clients.filter((v) => v.sse).length} of ${CLIENTS} clients on SSE), ` +
      `${published} events published, ${sum('events')} received, ${sum('duplicates')} duplicates, ${sum('reorders')} reorders, ` +
      `${sum('silentGaps')} gaps without resync, ${sum('resyncs')} resyncs; heap ${(base / 1048576).toFixed(1)} → ${(after / 1048576).toFixed(1)} MB`,
  )
  for (const v of clients) for (const line of v.log) console.log(line)
  const behind = clients.filter((v) => !v.topics.every((t) => caughtUp(v, t)))
  expect(behind.map((v) => v.topics.map((t) => `${t}: ${v.last.get(t)}/${seq.get(t)}`))).toEqual([])
  expect(sum('connections')).toBeGreaterThan(CLIENTS * 3)
  expect(sum('duplicates')).toBe(0)
  expect(sum('reorders')).toBe(0)
  expect(sum('silentGaps')).toBe(0)
  expect(f.rt.stats().errors).toBe(0)
  await new Promise((r) => setTimeout(r, 200))
  expect(f.rt.stats()).toMatchObject({ connections: 0, fallbackStreams: 0, subscriptions: 0 })
  expect(after - base).toBeLessThan(16 * 1048576)
})
