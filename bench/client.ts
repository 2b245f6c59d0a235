/**
 * The bench client process: `node --import tsx bench/client.ts`. Holds up
 * to tens of thousands of cheap raw connections (see wire.ts) to one server
 * and counts event frames. It reports when an expected number of events
 * has arrived, with monotonic timestamps (CLOCK_MONOTONIC is shared by every
 * process on the machine, so they compare with the server's).
 */
import { serve } from './ipc'
import { SYSTEMS, wireFor, type System } from './systems'
import { openWire } from './wire'
import { openSse } from './wire-sse'
import { openPoll } from './wire-poll'

let sockets: Array<{ destroy(): unknown }> = []
let received = 0
let closedAfterReady = 0
let target = Infinity
let first = 0n
let last = 0n
let cpuAt = process.cpuUsage()
let done: (() => void) | undefined
/** Per event (in order), when the last socket got it, in ms of the monotonic clock: only while `expect` asked to track. */
let track = false
let arrivals: number[] = []
/** Events each socket got since `expect`, by socket. */
const counters: number[] = []

function countEvent(): void {
  received++
  if (received === 1) first = process.hrtime.bigint()
  if (received >= target) {
    last = process.hrtime.bigint()
    target = Infinity
    done?.()
  }
}

interface ConnectArgs {
  system: System
  port: number
  n: number
  /** Client i subscribes to `topicsOf[i % topicsOf.length]`. */
  topicsOf: string[][]
  concurrency: number
  /** cms-realtime only: connect over its SSE fallback, or long polling, instead of WebSockets. */
  transport?: 'ws' | 'sse' | 'poll'
  /** cms-realtime only: subscribe with frames after the 101 instead of in the handshake. */
  frames?: boolean
}

serve({
  async connect({ system, port, n, topicsOf, concurrency, transport = 'ws', frames = false }: ConnectArgs) {
    if (!SYSTEMS.includes(system)) throw new Error(`unknown system ${system}`)
    const t0 = process.hrtime.bigint()
    let next = 0
    let errors = 0
    let firstError = ''
    const worker = async (): Promise<void> => {
      while (next < n) {
        const i = next++
        try {
          const topics = topicsOf[i % topicsOf.length]!
          const onClose = (): void => { closedAfterReady++ }
          const k = counters.push(0) - 1
          const onEvent = (): void => {
            // The socket that writes an index last got it last: a max over sockets for one store.
            if (track) arrivals[counters[k]!++] = Number(process.hrtime.bigint()) / 1e6
            countEvent()
          }
          const s = transport === 'poll'
            ? await openPoll({ port, topics, onEvent, onClose })
            : transport === 'sse'
            ? await openSse({ port, path: `/realtime/events?topics=${encodeURIComponent(topics.join(','))}`, topics: topics.length, onEvent, onClose })
            : await openWire({ ...wireFor(system, topics, frames), port, onEvent, onClose })
          sockets.push(s)
        } catch (err) {
          errors++
          firstError ||= err instanceof Error ? err.message : String(err)
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker))
    return { open: sockets.length, errors, firstError, ms: Number(process.hrtime.bigint() - t0) / 1e6 }
  },
  /** Arm the counter: the next reply comes when `count` more events arrived (or `timeoutMs` passed). */
  expect({ count, track: tracking = false }: { count: number; track?: boolean }) {
    track = tracking
    arrivals = []
    counters.fill(0)
    received = 0
    first = 0n
    last = 0n
    target = count
    cpuAt = process.cpuUsage()
    return null
  },
  async wait({ timeoutMs }: { timeoutMs: number }) {
    if (target !== Infinity) {
      const ok = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), timeoutMs)
        done = () => { clearTimeout(timer); resolve(true) }
      })
      done = undefined
      if (!ok) {
        const got = received
        target = Infinity
        return { ok: false, received: got, closed: closedAfterReady }
      }
    }
    const cpu = process.cpuUsage(cpuAt)
    return { ok: true, received, first: String(first), last: String(last), cpuUs: cpu.user + cpu.system, closed: closedAfterReady }
  },
  /** What `expect({ track: true })` recorded, and tracking off. */
  arrivals() {
    track = false
    return { arrivals }
  },
  closeAll() {
    for (const s of sockets) s.destroy()
    sockets = []
    counters.length = 0
    return null
  },
})
