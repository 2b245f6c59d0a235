/**
 * The embedded default bus: one process, no dependencies. History is a
 * bounded ring per topic (by count and by age), so a reconnecting client can
 * recover what it missed while this process lives.
 */
import { randomBytes } from 'node:crypto'
import type { Bus, BusEvent } from '../types'

export interface MemoryBusOptions {
  /** Events kept per topic for recovery. Default 100. */
  historySize?: number
  /** Oldest event kept, in ms. Default 300000 (5 minutes). */
  historyMaxAgeMs?: number
}

interface Stored extends BusEvent {
  seq: number
  at: number
}

interface TopicLog {
  /** Global sequence number when this log was created: it knows every event after it. */
  createdAt: number
  /** Highest sequence number dropped from this log (by size or age). */
  evictedUpTo: number
  /** Oldest first. */
  events: Stored[]
}

export class MemoryBus implements Bus {
  readonly historySize: number
  readonly historyMaxAgeMs: number
  /**
   * Cursors are `<epoch>-<seq>`, with one sequence for the whole bus (so it
   * increases per topic too, and survives a topic's log being swept). The
   * epoch is new per bus: a cursor from before a restart is recognised as
   * foreign and answered with a resync, never matched to a different event.
   */
  private readonly epoch = randomBytes(4).toString('hex')
  private seq = 0
  /** Highest sequence number of any log removed by the sweeper. */
  private sweptUpTo = 0
  private readonly logs = new Map<string, TopicLog>()
  private readonly subscribed = new Set<string>()
  private listener: (event: BusEvent) => void = () => {}
  private readonly sweeper: NodeJS.Timeout

  constructor(options: MemoryBusOptions = {}) {
    this.historySize = options.historySize ?? 100
    this.historyMaxAgeMs = options.historyMaxAgeMs ?? 300_000
    if (!Number.isInteger(this.historySize) || this.historySize < 0) {
      throw new TypeError('cms-realtime: option "historySize" must be a whole number >= 0')
    }
    if (!(this.historyMaxAgeMs > 0)) throw new TypeError('cms-realtime: option "historyMaxAgeMs" must be > 0')
    // Topics nobody publishes to any more must not hold memory forever.
    this.sweeper = setInterval(() => this.sweep(), Math.min(this.historyMaxAgeMs, 60_000))
    this.sweeper.unref()
  }

  /** Synchronous: a bulk import publishes thousands in a loop. */
  publish(topic: string, type: string, data: string): BusEvent {
    let log = this.logs.get(topic)
    if (log === undefined) {
      log = { createdAt: this.seq, evictedUpTo: 0, events: [] }
      this.logs.set(topic, log)
    }
    const seq = ++this.seq
    const event: Stored = { topic, id: `${this.epoch}-${seq}`, type, data, seq, at: Date.now() }
    log.events.push(event)
    if (log.events.length > this.historySize) log.evictedUpTo = log.events.shift()!.seq
    if (this.subscribed.has(topic)) this.listener(event)
    return event
  }

  subscribe(topic: string): void {
    this.subscribed.add(topic)
  }

  unsubscribe(topic: string): void {
    this.subscribed.delete(topic)
  }

  onEvent(listener: (event: BusEvent) => void): void {
    this.listener = listener
  }

  history(topic: string, since: string): Promise<BusEvent[] | null> {
    return Promise.resolve(this.read(topic, since))
  }

  latest(): Promise<string> {
    return Promise.resolve(`${this.epoch}-${this.seq}`)
  }

  close(): Promise<void> {
    clearInterval(this.sweeper)
    this.subscribed.clear()
    return Promise.resolve()
  }

  private read(topic: string, since: string): BusEvent[] | null {
    const seq = this.parse(since)
    if (seq === null || seq > this.seq) return null
    const log = this.logs.get(topic)
    // Without a log that predates the cursor we only know nothing was
    // published after it if nothing was swept after it either.
    if (log === undefined) return seq >= this.sweptUpTo ? [] : null
    if (log.createdAt > seq && seq < this.sweptUpTo) return null
    this.expire(log)
    if (log.evictedUpTo > seq) return null
    const events = log.events
    let i = events.length
    while (i > 0 && events[i - 1]!.seq > seq) i--
    return events.slice(i)
  }

  private parse(cursor: string): number | null {
    const dash = cursor.lastIndexOf('-')
    if (dash < 0 || cursor.slice(0, dash) !== this.epoch) return null
    const seq = Number(cursor.slice(dash + 1))
    return Number.isSafeInteger(seq) && seq >= 0 ? seq : null
  }

  private expire(log: TopicLog): void {
    const cutoff = Date.now() - this.historyMaxAgeMs
    let drop = 0
    while (drop < log.events.length && log.events[drop]!.at < cutoff) drop++
    if (drop > 0) log.evictedUpTo = log.events.splice(0, drop).at(-1)!.seq
  }

  private sweep(): void {
    for (const [topic, log] of this.logs) {
      this.expire(log)
      if (log.events.length === 0 && !this.subscribed.has(topic)) {
        this.sweptUpTo = Math.max(this.sweptUpTo, log.evictedUpTo)
        this.logs.delete(topic)
      }
    }
  }
}
