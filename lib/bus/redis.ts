/**
 * The Redis bus (`cms-realtime/redis`): history in one Redis Stream per
 * topic, whose ids are the cursors, and live delivery between nodes through
 * pub/sub on the topics this node's clients hold. A Redis outage degrades to
 * local delivery; see docs/redis.md for the guarantees.
 */
import { randomBytes } from 'node:crypto'
import debug from 'debug'
import type { Bus, BusEvent } from '../types'
import type { RedisBusOptions, RedisClientLike, RedisSubscriberLike } from './redis-options'
import { HISTORY, LATEST, PUBLISH, type Script } from './redis-scripts'

export type { RedisBusOptions, RedisClientLike, RedisSubscriberLike } from './redis-options'

const log = debug('cms-realtime:redis')

type Listener = (message: string) => void

interface TopicState {
  listener: Listener
  /** Settles once Redis confirmed the subscription (history reads wait for it). */
  ready: Promise<void>
  /** Last stream id delivered: live messages at or below it are duplicates. */
  lastId: string | null
  /** Live messages held while missed events are read back after a reconnect. */
  held: BusEvent[] | null
  /** Ids already delivered early, while the subscriber connection was down. */
  early: Set<string>
}

const STREAM_ID = /^(\d{1,15})-(\d{1,20})$/

export class RedisBus implements Bus {
  readonly keyPrefix: string
  readonly historySize: number
  readonly historyMaxAgeMs: number
  readonly idleTtlMs: number
  readonly commandTimeoutMs: number
  private readonly sub: RedisSubscriberLike
  private readonly topics = new Map<string, TopicState>()
  /** Topics published without Redis: the next write records a gap first. */
  private readonly dirty = new Set<string>()
  /** Local cursors (during an outage) carry this: foreign to `history`, so they mean resync. */
  private readonly epoch = randomBytes(4).toString('hex')
  private localSeq = 0
  private subLost = false
  private readonly connecting: Promise<unknown>
  private listener: (event: BusEvent) => void = () => {}
  private resyncListener: (topic: string) => void = () => {}
  private closed = false
  private readonly onError = (err: Error): void => log('redis error: %s', err.message)
  private readonly onReady = (): void => { void this.recover() }

  constructor(private readonly client: RedisClientLike, options: RedisBusOptions = {}) {
    this.keyPrefix = options.keyPrefix ?? 'cms-realtime:'
    this.historySize = options.historySize ?? 1000
    this.historyMaxAgeMs = options.historyMaxAgeMs ?? 0
    this.idleTtlMs = options.idleTtlMs ?? 86_400_000
    this.commandTimeoutMs = options.commandTimeoutMs ?? 1000
    if (typeof client?.sendCommand !== 'function' || typeof client.duplicate !== 'function') {
      throw new TypeError('cms-realtime: RedisBus needs a node-redis client (createClient() from the "redis" package)')
    }
    if (typeof this.keyPrefix !== 'string') throw new TypeError('cms-realtime: option "keyPrefix" must be a string')
    if (!Number.isInteger(this.historySize) || this.historySize < 1) throw new TypeError('cms-realtime: option "historySize" must be a whole number >= 1')
    if (!(this.historyMaxAgeMs >= 0)) throw new TypeError('cms-realtime: option "historyMaxAgeMs" must be >= 0')
    if (!Number.isInteger(this.idleTtlMs) || this.idleTtlMs < 1000) throw new TypeError('cms-realtime: option "idleTtlMs" must be a whole number >= 1000')
    if (!(this.commandTimeoutMs > 0)) throw new TypeError('cms-realtime: option "commandTimeoutMs" must be > 0')
    // An 'error' event without a listener would crash the app during an outage.
    client.on('error', this.onError)
    client.on('ready', this.onReady)
    this.sub = client.duplicate()
    this.sub.on('error', this.onError)
    this.sub.on('reconnecting', () => { this.subLost = true })
    this.sub.on('ready', this.onReady)
    this.connecting = this.sub.connect().catch((err: Error) => log('subscriber connect failed: %s', err.message))
  }

  /** Both connections are up: events go through Redis. */
  get connected(): boolean {
    return this.client.isReady && this.sub.isReady
  }

  /**
   * Through Redis when it is reachable; otherwise to this node's subscribers
   * only, with a local cursor that later makes a recovering client resync.
   * Never rejects because of Redis.
   */
  async publish(topic: string, type: string, data: string): Promise<BusEvent> {
    if (this.client.isReady && !this.closed) {
      try {
        const id = String(await this.write(topic, type, data))
        const event: BusEvent = { topic, id, type, data }
        // Without our subscriber connection the event would wait for it: deliver now, skip its echo later.
        const state = this.topics.get(topic)
        if (state !== undefined && !this.sub.isReady) {
          state.early.add(id)
          this.listener(event)
        }
        return event
      } catch (err) {
        log('publish to %s through Redis failed, delivering locally: %s', topic, (err as Error).message)
      }
    }
    this.dirty.add(topic)
    const event: BusEvent = { topic, id: `local:${this.epoch}:${++this.localSeq}`, type, data }
    if (this.topics.has(topic)) this.listener(event)
    return event
  }

  subscribe(topic: string): Promise<void> {
    const existing = this.topics.get(topic)
    if (existing !== undefined) return existing.ready
    const state: TopicState = { listener: (m) => this.onMessage(topic, state, m), ready: Promise.resolve(), lastId: null, held: null, early: new Set() }
    this.topics.set(topic, state)
    state.ready = this.listen(topic, state)
    return state.ready
  }

  async unsubscribe(topic: string): Promise<void> {
    const state = this.topics.get(topic)
    if (state === undefined) return
    this.topics.delete(topic)
    try {
      await this.sub.unsubscribe(this.channel(topic), state.listener)
    } catch (err) {
      log('unsubscribe from %s failed: %s', topic, (err as Error).message)
    }
  }

  onEvent(listener: (event: BusEvent) => void): void {
    this.listener = listener
  }

  onResync(listener: (topic: string) => void): void {
    this.resyncListener = listener
  }

  async history(topic: string, since: string): Promise<BusEvent[] | null> {
    if (!STREAM_ID.test(since) || !this.client.isReady || this.closed) return null
    // Read after our subscription is confirmed, so every event is either
    // in what we read or delivered live afterwards.
    const state = this.topics.get(topic)
    if (state !== undefined) await bounded(state.ready, this.commandTimeoutMs)
    try {
      return await this.read(topic, since)
    } catch (err) {
      log('history of %s unavailable: %s', topic, (err as Error).message)
      return null
    }
  }

  async latest(topic: string): Promise<string> {
    const state = this.topics.get(topic)
    if (state !== undefined && this.client.isReady) await bounded(state.ready, this.commandTimeoutMs)
    if (this.client.isReady && !this.closed) {
      try {
        return String(await this.run(LATEST, topic, []))
      } catch (err) {
        log('latest of %s unavailable: %s', topic, (err as Error).message)
      }
    }
    return `local:${this.epoch}:${this.localSeq}`
  }

  /** Stop listening and close the bus's own subscriber connection. The client you passed stays yours to close. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.topics.clear()
    this.client.off('error', this.onError)
    this.client.off('ready', this.onReady)
    // Destroying a connection mid-handshake can leave its socket open.
    await bounded(this.connecting, this.commandTimeoutMs)
    this.sub.destroy()
  }

  // ---- internals ----

  private stream(topic: string): string {
    return `${this.keyPrefix}stream:${topic}`
  }

  private channel(topic: string): string {
    return `${this.keyPrefix}live:${topic}`
  }

  private write(topic: string, type: string, data: string): Promise<unknown> {
    const gap = this.dirty.has(topic)
    const tail = type === '' ? '' : JSON.stringify([type, data])
    return this.run(PUBLISH, topic, [
      this.channel(topic), type, data, tail,
      String(this.historySize), String(this.historyMaxAgeMs), String(this.idleTtlMs), gap ? '1' : '0',
    ]).then((id) => {
      if (gap) this.dirty.delete(topic)
      return id
    })
  }

  /** `onGap`: for our own catch-up, read past gap markers and report them instead of refusing. */
  private async read(topic: string, since: string, onGap?: () => void): Promise<BusEvent[] | null> {
    const reply = await this.run(HISTORY, topic, [since, String(this.idleTtlMs)]) as [number, Array<[string, string[]]>?]
    if (reply[0] !== 1) return null
    const events: BusEvent[] = []
    for (const [id, fields] of reply[1] ?? []) {
      const f = pairs(fields)
      // Events were published here while Redis was away: what is stored is not all that happened.
      if (f.g !== undefined) {
        if (onGap === undefined) return null
        log('%s has a gap (events published without Redis) after %s', topic, since)
        onGap()
        continue
      }
      events.push({ topic, id, type: f.t ?? '', data: f.d ?? 'null' })
    }
    return events
  }

  /** EVALSHA, loading the script on first use (and after a SCRIPT FLUSH or failover). */
  private async run(s: Script, topic: string, args: string[]): Promise<unknown> {
    const opts = { timeout: this.commandTimeoutMs }
    const tail = ['1', this.stream(topic), ...args]
    try {
      return await this.client.sendCommand(['EVALSHA', s.sha, ...tail], opts)
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
      return this.client.sendCommand(['EVAL', s.source, ...tail], opts)
    }
  }

  private async listen(topic: string, state: TopicState): Promise<void> {
    try {
      await this.sub.subscribe(this.channel(topic), state.listener)
      if (this.topics.get(topic) !== state || !this.client.isReady) return
      const cursor = String(await this.run(LATEST, topic, []))
      state.lastId = max(state.lastId, cursor)
    } catch (err) {
      log('subscribe to %s: %s', topic, (err as Error).message)
    }
  }

  private onMessage(topic: string, state: TopicState, message: string): void {
    const nl = message.indexOf('\n')
    if (nl === message.length - 1) {
      // A gap notice: some node delivered events of this topic only locally.
      if (this.topics.get(topic) === state) this.resyncListener(topic)
      return
    }
    let event: BusEvent
    try {
      const [type, data] = JSON.parse(message.slice(nl + 1)) as [string, string]
      event = { topic, id: message.slice(0, nl), type, data }
    } catch {
      log('ignoring a malformed message on %s', topic)
      return
    }
    if (state.held !== null) state.held.push(event)
    else this.deliver(state, event)
  }

  private deliver(state: TopicState, event: BusEvent): void {
    if (state.lastId !== null && compareIds(event.id, state.lastId) <= 0) return
    state.lastId = event.id
    if (state.early.delete(event.id)) return
    if (this.topics.get(event.topic) === state) this.listener(event)
  }

  /**
   * Both connections are back: record the gaps this node left in history,
   * then read back what the subscriber connection missed while it was down
   * (node-redis has already resubscribed to every channel).
   */
  private async recover(): Promise<void> {
    if (this.closed || !this.client.isReady) return
    for (const topic of [...this.dirty]) {
      await this.write(topic, '', '').catch((err: Error) => log('could not record the gap on %s: %s', topic, err.message))
    }
    if (!this.subLost || !this.sub.isReady) return
    this.subLost = false
    log('reconnected; catching up on %d topics', this.topics.size)
    await Promise.all([...this.topics].map(async ([topic, state]) => {
      if (state.lastId === null) return
      state.held ??= []
      let missed: BusEvent[] | null = null
      let gap = false
      try {
        missed = await this.read(topic, state.lastId, () => { gap = true })
      } catch (err) {
        log('catch-up on %s failed: %s', topic, (err as Error).message)
      }
      if (missed === null) log('history of %s no longer reaches back to %s: its clients here must resync', topic, state.lastId)
      if ((missed === null || gap) && this.topics.get(topic) === state) this.resyncListener(topic)
      const held = state.held
      state.held = null
      for (const event of [...(missed ?? []), ...held]) this.deliver(state, event)
    }))
  }
}

function pairs(fields: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < fields.length; i += 2) out[fields[i]!] = fields[i + 1]!
  return out
}

function compareIds(a: string, b: string): number {
  const [am = 0n, as = 0n] = a.split('-').map(BigInt)
  const [bm = 0n, bs = 0n] = b.split('-').map(BigInt)
  return am !== bm ? (am < bm ? -1 : 1) : as === bs ? 0 : as < bs ? -1 : 1
}

function max(a: string | null, b: string): string {
  if (!STREAM_ID.test(b)) return a ?? b
  return a === null || compareIds(b, a) > 0 ? b : a
}

/** Wait for `p`, but no longer than `ms`; never rejects. */
function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    t.unref()
    p.then(() => { clearTimeout(t); resolve() }, () => { clearTimeout(t); resolve() })
  })
}
