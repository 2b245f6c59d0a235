/**
 * Paced fan-out. A lone event goes to every subscriber at once, one write per
 * socket. Events published while the server is already busy delivering (a
 * bulk import publishing thousands in a loop) queue up, and are sent from
 * setImmediate slices of at most SLICE_MS each, so the event loop keeps
 * serving requests and sockets keep draining between slices; runs of
 * consecutive events of one topic are framed once and written to each
 * socket as one buffer (N frames, one syscall) instead of N writes.
 *
 * Order: the queue is FIFO and a run never spans topics, so every
 * subscriber sees each topic's events in publish order.
 */
import type { Duplex } from 'node:stream'
import { wsTextFrames, encodeEvent } from './protocol'
import type { Subscriber } from './hub'
import type { BusEvent } from './types'

/** Longest a delivery slice may hold the event loop. */
const SLICE_MS = 8
/** Payload bytes framed into one write: a run stops growing here. */
const RUN_BYTES = 32 * 1024

/** Sockets corked during the current drain slice; `null` outside a slice. */
let sliceSockets: Duplex[] | null = null

/**
 * Inside a drain slice, hold `socket`'s writes until the slice ends, so a
 * client subscribed to several busy topics gets one write per slice rather
 * than one per run. Outside a slice (a lone event) writes go out at once.
 * Once `flushAt` bytes are held they go out early: corked bytes count as
 * buffered, and must not make a healthy client look like a slow consumer.
 */
export function holdForSlice(socket: Duplex, flushAt: number): void {
  if (sliceSockets === null) return
  if (socket.writableCorked === 0) {
    socket.cork()
    sliceSockets.push(socket)
  } else if (socket.writableLength >= flushAt) {
    socket.uncork()
    socket.cork()
  }
}

export class Delivery {
  private queue: BusEvent[] = []
  private head = 0
  /** A drain is scheduled: new events must queue behind it. */
  private scheduled = false
  /** Events ever queued / ever taken off the queue; barriers compare the two. */
  private queued = 0
  private taken = 0
  private barriers: Array<{ at: number; resolve: () => void }> = []

  constructor(private readonly subscribers: (topic: string) => ReadonlySet<Subscriber> | undefined) {}

  push(event: BusEvent): void {
    if (!this.scheduled) {
      // Idle: deliver now (no added latency), and let anything else
      // published in this same turn queue up and go out batched.
      this.scheduled = true
      setImmediate(this.drain)
      const frame = encodeEvent(event)
      this.send(event.topic, [event], [frame])
      return
    }
    this.queue.push(event)
    this.queued++
  }

  /** Resolves once every event queued before the call has been handed to its subscribers. */
  drained(): Promise<void> {
    if (this.taken === this.queued) return Promise.resolve()
    return new Promise((resolve) => this.barriers.push({ at: this.queued, resolve }))
  }

  get backlog(): number {
    return this.queued - this.taken
  }

  private readonly drain = (): void => {
    const end = performance.now() + SLICE_MS
    const q = this.queue
    sliceSockets = []
    try {
      this.slice(q, end)
    } finally {
      const corked = sliceSockets
      sliceSockets = null
      for (const socket of corked) socket.uncork()
    }
    if (this.head === q.length) {
      this.queue = []
      this.head = 0
      this.scheduled = false
    } else {
      if (this.head > 4096) {
        this.queue = q.slice(this.head)
        this.head = 0
      }
      setImmediate(this.drain)
    }
    if (this.barriers.length > 0) this.release()
  }

  private slice(q: BusEvent[], end: number): void {
    while (this.head < q.length) {
      const first = q[this.head]!
      const events = [first]
      const frames = [encodeEvent(first)]
      let bytes = frames[0]!.length
      let i = this.head + 1
      while (i < q.length && bytes < RUN_BYTES && q[i]!.topic === first.topic) {
        const frame = encodeEvent(q[i]!)
        events.push(q[i]!)
        frames.push(frame)
        bytes += frame.length
        i++
      }
      this.taken += i - this.head
      this.head = i
      this.send(first.topic, events, frames)
      if (performance.now() >= end) return
    }
  }

  private send(topic: string, events: BusEvent[], frames: Buffer[]): void {
    const subs = this.subscribers(topic)
    if (subs === undefined) return
    let wire: Buffer | undefined
    for (const sub of subs) {
      if (sub.deliverBatch !== undefined) sub.deliverBatch(events, frames, (wire ??= wsTextFrames(frames)))
      else for (let k = 0; k < events.length; k++) sub.deliver(events[k]!, frames[k]!)
    }
  }

  private release(): void {
    const due = this.barriers.filter((b) => b.at <= this.taken)
    if (due.length === 0) return
    this.barriers = this.barriers.filter((b) => b.at > this.taken)
    for (const b of due) b.resolve()
  }
}
