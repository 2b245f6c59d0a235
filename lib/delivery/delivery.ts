/**
 * Paced fan-out. A lone event goes to every subscriber at once, one write per
 * socket. Events published while the server is already busy delivering (a
 * bulk import publishing thousands in a loop) queue up, and are sent from
 * setImmediate slices of at most SLICE_MS each, so the event loop keeps
 * serving requests and sockets keep draining between slices; runs of
 * consecutive events of one topic are framed once, and a slice's frames for
 * one socket, whatever their topics, are written to it as one buffer when
 * the slice ends (N frames, one syscall) instead of N writes.
 *
 * Order: the queue is FIFO and a run never spans topics, so every
 * subscriber sees each topic's events in publish order.
 */
import type { Duplex } from 'node:stream'
import { wsTextFrames, encodeEvent } from '../protocol/protocol'
import type { Subscriber } from './hub'
import type { BusEvent } from '../types'

/** Longest a delivery slice may hold the event loop. */
const SLICE_MS = 8
/**
 * Longest the first event of a turn is written inline, inside `publish`:
 * enough for a lone event to reach a few hundred sockets at once; the rest
 * follow in this turn's drain, so a bulk import's loop is not held for a
 * full slice by its first event.
 */
const INLINE_MS = 2
/** Payload bytes framed into one write: a run stops growing here. */
const RUN_BYTES = 32 * 1024

/** Events of one topic on their way out; `rest` is set when a slice ran out of time mid-way. */
interface Run {
  events: BusEvent[]
  frames: Buffer[]
  wire: Buffer | undefined
  rest: Subscriber[] | undefined
}

export class Delivery {
  // This instance's slice: another `Realtime` in the same process has its
  // own, so its writes are never corked into (or uncorked by) ours.
  /** Sockets corked during the current drain slice (event streams); `null` outside a slice. */
  private sliceSockets: Duplex[] | null = null
  /**
   * WebSocket frames gathered per socket during the current slice, written
   * as one buffer when it ends: a client on several busy topics gets one
   * write (one syscall) per slice, whatever the runs, and a gathered frame
   * costs an array push, not a stream write.
   */
  private gathered = new Map<Duplex, { bufs: Buffer[]; bytes: number }>()
  /** Bytes held this slice (gathered or corked) and not yet handed to the kernel. */
  private heldBytes = 0
  /**
   * What handing held bytes to the kernel at a slice's end costs, in ms per
   * byte (a moving average of measured flushes; starts at 1 GB/s). The slice
   * budget counts it: 1,000 sockets × 64 KB held take ~60 ms to flush.
   */
  private flushMsPerByte = 1e-6
  /**
   * And the fixed part: a syscall per socket (7–10 µs to a loopback client),
   * the same however much the slice holds for it. Ending a slice early for it
   * would only pay it more often (a bulk edit over 100 topics touches every
   * socket in every slice), so a slice that holds many sockets works longer
   * instead, up to another SLICE_MS: at least as long as its flush will take.
   */
  private flushMsPerSocket = 0.008
  /**
   * A socket's early flush left bytes in user space (the kernel would not take
   * them): end the slice so sockets can drain, rather than pile more on a
   * healthy client until it looks like a slow consumer.
   */
  private pressure = false
  private queue: BusEvent[] = []
  private head = 0
  /** A drain is scheduled: new events must queue behind it. */
  private scheduled = false
  /** A run whose remaining subscribers are served first in the next slice. */
  private partial: Run | undefined
  private deadline = 0
  /** When the pending drain was scheduled, and whether it already yielded once. */
  private scheduledAt = 0
  private yielded = false
  /** Events ever queued / fully handed out; barriers compare the two. */
  private queued = 0
  private handed = 0
  private barriers: Array<{ at: number; resolve: () => void }> = []

  constructor(private readonly subscribers: (topic: string) => ReadonlySet<Subscriber> | undefined) {}

  push(event: BusEvent): void {
    this.queued++
    if (!this.scheduled) {
      // Idle: deliver now (no added latency), and let anything else
      // published in this same turn queue up and go out batched.
      this.scheduled = true
      setImmediate(this.drain)
      this.scheduledAt = performance.now()
      this.deadline = this.scheduledAt + INLINE_MS
      this.send({ events: [event], frames: [encodeEvent(event)], wire: undefined, rest: undefined })
      return
    }
    this.queue.push(event)
  }

  /**
   * Inside a drain slice, hold `socket`'s writes until the slice ends, so a
   * client subscribed to several busy topics gets one write per slice rather
   * than one per run. Outside a slice (a lone event) writes go out at once.
   * Once `flushAt` bytes are held they go out early: corked bytes count as
   * buffered, and must not make a healthy client look like a slow consumer.
   */
  hold(socket: Duplex, flushAt: number, bytes: number): void {
    if (this.sliceSockets === null) return
    if (socket.writableCorked === 0) {
      socket.cork()
      this.sliceSockets.push(socket)
    } else if (socket.writableLength >= flushAt) {
      this.heldBytes = Math.max(0, this.heldBytes - socket.writableLength)
      socket.uncork()
      if (socket.writableLength > 0) this.pressure = true
      socket.cork()
    }
    this.heldBytes += bytes
  }

  /**
   * Inside a drain slice, take `wire` for `socket` and write it (with the
   * rest of the slice's frames for that socket) when the slice ends; false
   * outside a slice (write it now). Past `flushAt` bytes a socket's frames
   * go out at once, so they never sit uncounted by its backpressure check.
   */
  gather(socket: Duplex, wire: Buffer, flushAt: number): boolean {
    if (this.sliceSockets === null) return false
    let held = this.gathered.get(socket)
    if (held === undefined) this.gathered.set(socket, (held = { bufs: [], bytes: 0 }))
    held.bufs.push(wire)
    held.bytes += wire.length
    this.heldBytes += wire.length
    if (held.bytes >= flushAt) {
      this.heldBytes -= held.bytes
      this.write(socket, held)
      this.gathered.delete(socket)
      if (socket.writableLength > 0) this.pressure = true
    }
    return true
  }

  /** Write what is gathered for `socket` now (before a close frame, which must come last). */
  flush(socket: Duplex): void {
    const held = this.gathered.get(socket)
    if (held === undefined) return
    this.gathered.delete(socket)
    this.heldBytes -= held.bytes
    this.write(socket, held)
  }

  private write(socket: Duplex, held: { bufs: Buffer[]; bytes: number }): void {
    if (socket.destroyed) return
    socket.write(held.bufs.length === 1 ? held.bufs[0]! : Buffer.concat(held.bufs, held.bytes))
  }

  /** Resolves once every event published before the call has been handed to its subscribers. */
  drained(): Promise<void> {
    if (this.handed === this.queued) return Promise.resolve()
    return new Promise((resolve) => this.barriers.push({ at: this.queued, resolve }))
  }

  get backlog(): number {
    return this.queued - this.handed
  }

  private readonly drain = (): void => {
    const now = performance.now()
    if (now - this.scheduledAt > SLICE_MS && !this.yielded) {
      // The loop was held since this drain was scheduled (the app's own
      // publish loop, say): let timers and I/O run before taking a slice.
      // Once only, so a loop that is always busy cannot starve delivery.
      this.yielded = true
      this.scheduledAt = now
      setImmediate(this.drain)
      return
    }
    this.yielded = false
    this.deadline = now + SLICE_MS
    // The rest of an interrupted run first, uncorked: it is one write per
    // socket anyway (the usual case: a lone event's sockets beyond the
    // inline budget), and holding it would only add cork bookkeeping.
    if (this.partial === undefined || this.send(this.partial)) this.corkedSlice()
    if (this.partial === undefined && this.head === this.queue.length) {
      this.queue = []
      this.head = 0
      this.scheduled = false
    } else {
      if (this.head > 4096) {
        this.queue = this.queue.slice(this.head)
        this.head = 0
      }
      setImmediate(this.drain)
      this.scheduledAt = performance.now()
    }
    if (this.barriers.length > 0) this.release()
  }

  /** `slice()` with every socket it writes to corked until it ends. */
  private corkedSlice(): void {
    const corked: Duplex[] = (this.sliceSockets = [])
    this.pressure = false
    try {
      this.slice()
    } finally {
      this.sliceSockets = null
      const t = performance.now()
      const bytes = this.heldBytes
      this.heldBytes = 0
      const sockets = corked.length + this.gathered.size
      for (const socket of corked) socket.uncork()
      for (const [socket, held] of this.gathered) this.write(socket, held)
      this.gathered.clear()
      // Learnt only from flushes of large writes, where the bytes dominate: from
      // small ones, the syscalls' cost would pass for a cost per byte.
      const ms = performance.now() - t
      if (bytes >= 1 << 20 && bytes >= sockets * 16_384) this.flushMsPerByte = 0.7 * this.flushMsPerByte + 0.3 * (ms / bytes)
      else if (sockets >= 100 && bytes < sockets * 4096) {
        this.flushMsPerSocket = 0.7 * this.flushMsPerSocket + 0.3 * (Math.max(0, ms - bytes * this.flushMsPerByte) / sockets)
      }
    }
  }

  private slice(): void {
    const q = this.queue
    while (this.head < q.length) {
      const first = q[this.head]!
      const run: Run = { events: [first], frames: [encodeEvent(first)], wire: undefined, rest: undefined }
      let bytes = run.frames[0]!.length
      let i = this.head + 1
      while (i < q.length && bytes < RUN_BYTES && q[i]!.topic === first.topic) {
        const frame = encodeEvent(q[i]!)
        run.events.push(q[i]!)
        run.frames.push(frame)
        bytes += frame.length
        i++
      }
      this.head = i
      if (!this.send(run) || this.overdue()) return
    }
  }

  /**
   * Hand `run` to its subscribers until the slice's time is up; returns
   * false (and keeps the rest as `partial`) if it could not finish. The rest
   * go first next time, so every subscriber still sees events in order.
   */
  private send(run: Run): boolean {
    const subs = run.rest ?? this.subscribers(run.events[0]!.topic)
    const it = subs === undefined ? undefined : subs[Symbol.iterator]()
    let n = 0
    for (let next = it?.next(); next !== undefined && next.done !== true; next = it!.next()) {
      // Check the clock every 32 sockets: one write can cost tens of µs.
      if ((++n & 31) === 0 && this.overdue()) {
        run.rest = [next.value, ...it!]
        this.partial = run
        return false
      }
      const sub = next.value
      if (sub.deliverBatch !== undefined) sub.deliverBatch(run.events, run.frames, (run.wire ??= wsTextFrames(run.frames)))
      else for (let k = 0; k < run.events.length; k++) sub.deliver(run.events[k]!, run.frames[k]!)
    }
    this.partial = undefined
    this.handed += run.events.length
    return true
  }

  /** Is the slice's time up, counting what flushing the corked sockets will take, or are sockets backing up? */
  private overdue(): boolean {
    const sockets = this.gathered.size + (this.sliceSockets?.length ?? 0)
    const longer = Math.min(SLICE_MS, sockets * this.flushMsPerSocket)
    return this.pressure || performance.now() + this.heldBytes * this.flushMsPerByte >= this.deadline + longer
  }

  private release(): void {
    const due = this.barriers.filter((b) => b.at <= this.handed)
    if (due.length === 0) return
    this.barriers = this.barriers.filter((b) => b.at > this.handed)
    for (const b of due) b.resolve()
  }
}
