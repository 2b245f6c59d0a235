/**
 * One bench server process: `node --import tsx bench/server.ts <system>`.
 * It serves one system on 127.0.0.1 and, on the runner's command, publishes
 * events and reports its own CPU time, event-loop delay and memory, so every
 * figure about the server is measured inside the server.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { writeHeapSnapshot } from 'node:v8'
import { WebSocketServer, type WebSocket } from 'ws'
import { Server as SocketIOServer } from 'socket.io'
import { createRealtime } from '../lib/server/realtime'
import { RedisBus } from '../lib/bus/redis'
import { createClient } from 'redis'
import { createAdapter } from '@socket.io/redis-adapter'
import { createAdapter as createStreamsAdapter } from '@socket.io/redis-streams-adapter'
import { serve } from './ipc'
import { eventData, SYSTEMS, type System } from './systems'

const system = process.argv[2] as System
if (!SYSTEMS.includes(system)) throw new Error(`unknown system ${process.argv[2]}`)
/**
 * Cluster mode (the cross-node case): `--redis URL --prefix P [--adapter
 * pubsub|streams]`. cms-realtime uses its RedisBus; Socket.IO its Redis
 * adapter (`@socket.io/redis-adapter`) or its Streams adapter.
 */
const argOf = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`)
  return i < 0 ? undefined : process.argv[i + 1]
}
const redisUrl = argOf('redis')
const prefix = argOf('prefix') ?? 'bench:'
const adapter = argOf('adapter') ?? 'pubsub'
let ready: Promise<unknown> = Promise.resolve()

/** Plain HTTP requests: cms-realtime answers its own routes (the SSE fallback among them). */
let onRequest: (req: IncomingMessage, res: ServerResponse) => boolean = () => false
const http = createServer((req, res) => { if (!onRequest(req, res)) res.writeHead(404).end() })
// Thousands of connections arrive at once; don't drop SYNs.
const listening = new Promise<void>((resolve) => http.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve))

function topicsOf(req: IncomingMessage): string[] {
  const raw = new URL(req.url ?? '/', 'http://x').searchParams.get('topics') ?? ''
  return raw === '' ? [] : raw.split(',')
}

/** Publish one event of `seq` to `topic`, the way an app would with this system. */
let publish: (topic: string, seq: number) => void
let stats: () => unknown = () => ({})

switch (system) {
  case 'cms-realtime': {
    const bus = redisUrl === undefined ? undefined : new RedisBus(createClient({ url: redisUrl }), { keyPrefix: prefix, idleTtlMs: 600_000 })
    // The baselines check nobody's access; neither does the bench (the CMS case's `notifications:u<i>` topics included).
    const rt = createRealtime({ server: http, authorize: () => true, ...(bus === undefined ? {} : { bus }) })
    onRequest = (req, res) => rt.handleRequest(req, res)
    publish = (topic, seq) => void rt.publish(topic, 'update', eventData(seq))
    stats = () => rt.stats()
    break
  }
  case 'ws': {
    // The practical floor: one pre-serialised buffer, `send` per socket.
    const rooms = new Map<string, Set<WebSocket>>()
    const wss = new WebSocketServer({ server: http, perMessageDeflate: false, clientTracking: false })
    wss.on('connection', (ws, req) => {
      const topics = topicsOf(req)
      for (const t of topics) {
        let set = rooms.get(t)
        if (set === undefined) rooms.set(t, (set = new Set()))
        set.add(ws)
      }
      ws.on('close', () => { for (const t of topics) rooms.get(t)?.delete(ws) })
      ws.on('error', () => {})
    })
    publish = (topic, seq) => {
      const subs = rooms.get(topic)
      if (subs === undefined) return
      const frame = Buffer.from(JSON.stringify({ op: 'event', topic, id: String(seq), type: 'update', data: eventData(seq) }))
      for (const ws of subs) ws.send(frame, { binary: false })
    }
    break
  }
  case 'socket.io': {
    const io = new SocketIOServer(http, { transports: ['websocket'], perMessageDeflate: false, serveClient: false })
    if (redisUrl !== undefined) {
      const pub = createClient({ url: redisUrl })
      const sub = pub.duplicate()
      ready = Promise.all([pub.connect(), sub.connect()]).then(() => {
        io.adapter(adapter === 'streams'
          ? createStreamsAdapter(pub, { streamName: `${prefix}socket.io` })
          : createAdapter(pub, sub, { key: `${prefix}socket.io` }))
      })
    }
    io.on('connection', (socket) => {
      const raw = socket.handshake.query.topics
      const topics = typeof raw === 'string' && raw !== '' ? raw.split(',') : []
      void socket.join(topics)
    })
    publish = (topic, seq) => { io.to(topic).emit('event', { topic, id: String(seq), type: 'update', data: eventData(seq) }) }
    break
  }
}

const eld = monitorEventLoopDelay({ resolution: 5 })
eld.enable()
/**
 * Our own probe as well: Node 20's histogram drops the first interval after
 * reset(), which is exactly the block a burst right after `mark` causes.
 * The longest gap between 5 ms ticks, minus 5 ms, is the longest block.
 */
const TICK = 5
let lastTick = performance.now()
let maxGap = 0
setInterval(() => {
  const now = performance.now()
  maxGap = Math.max(maxGap, now - lastTick)
  lastTick = now
}, TICK).unref()
let cpuAt = process.cpuUsage()
let seq = 0

interface BurstArgs { topics: string[]; count: number }

serve({
  async start() {
    await listening
    await ready
    return { port: (http.address() as AddressInfo).port, pid: process.pid }
  },
  /** Start measuring: CPU time and event-loop delay from here. */
  mark() {
    eld.reset()
    maxGap = 0
    lastTick = performance.now()
    cpuAt = process.cpuUsage()
    return null
  },
  /**
   * A bulk import: `count` events in one synchronous loop, rotating over
   * `topics`. Replies once the loop returned (delivery may continue after).
   */
  burst({ topics, count }: BurstArgs) {
    const t0 = process.hrtime.bigint()
    publish(topics[0]!, ++seq)
    const tFirst = process.hrtime.bigint()
    for (let i = 1; i < count; i++) publish(topics[i % topics.length]!, ++seq)
    const t1 = process.hrtime.bigint()
    return { t0: String(t0), loopMs: Number(t1 - t0) / 1e6, firstMs: Number(tFirst - t0) / 1e6 }
  },
  /**
   * A paced stream: `perTurn` publishes per event-loop turn (as when each
   * item awaits its database write), rotating over `topics`. Replies when
   * the last one was published.
   */
  async paced({ topics, count, perTurn }: BurstArgs & { perTurn: number }) {
    const t0 = process.hrtime.bigint()
    let i = 0
    await new Promise<void>((resolve) => {
      const step = (): void => {
        for (let k = 0; k < perTurn && i < count; k++, i++) publish(topics[i % topics.length]!, ++seq)
        if (i < count) setImmediate(step)
        else resolve()
      }
      step()
    })
    return { t0: String(t0) }
  },
  /**
   * A steady stream: `count` publishes on `topic` at `perSecond`, as many as
   * are due at each 1 ms timer. Replies with each publish's monotonic time
   * (ms; the clients' clock too) once the last one was published.
   */
  async rate({ topic, count, perSecond }: { topic: string; count: number; perSecond: number }) {
    const now = (): number => Number(process.hrtime.bigint()) / 1e6
    const times: number[] = []
    const start = now()
    await new Promise<void>((resolve) => {
      const step = (): void => {
        const due = Math.min(count, Math.floor(((now() - start) * perSecond) / 1000) + 1)
        while (times.length < due) {
          times.push(now())
          publish(topic, ++seq)
        }
        if (times.length < count) setTimeout(step, 1)
        else resolve()
      }
      step()
    })
    return { times }
  },
  /**
   * The app's own share of a burst loop (building and serialising the data),
   * timed alone, to tell it apart from the library's share.
   */
  appCost({ count }: { count: number }) {
    const a0 = process.hrtime.bigint()
    let sink = 0
    for (let i = 0; i < count; i++) sink += JSON.stringify(eventData(seq + i)).length
    return { appMs: Number(process.hrtime.bigint() - a0) / 1e6, sink }
  },
  /** One publish; replies after the reply's own turn so `t0` precedes every delivery. */
  one({ topic }: { topic: string }) {
    const t0 = process.hrtime.bigint()
    publish(topic, ++seq)
    return { t0: String(t0) }
  },
  /** Stop measuring: CPU µs since `mark`, worst event-loop delay. */
  measure() {
    const cpu = process.cpuUsage(cpuAt)
    // Include a block still under way (the reply itself waits for it).
    const blockMs = Math.max(maxGap, performance.now() - lastTick) - TICK
    return { cpuUs: cpu.user + cpu.system, eldMaxMs: Math.max(0, blockMs), eldP99Ms: eld.percentile(99) / 1e6 }
  },
  async memory() {
    const gc = (globalThis as { gc?: () => void }).gc
    for (let i = 0; i < 3; i++) {
      gc?.()
      await new Promise((r) => setImmediate(r))
    }
    const m = process.memoryUsage()
    return { rss: m.rss, heapUsed: m.heapUsed, external: m.external }
  },
  stats: () => stats(),
  /** `--heap-snapshot`: write one after the connections case, to see what each connection holds. */
  heapSnapshot: ({ dir }: { dir: string }) => ({ file: writeHeapSnapshot(join(dir, `${system}-${Date.now()}.heapsnapshot`)) }),
})

process.on('SIGTERM', () => process.exit(0))
