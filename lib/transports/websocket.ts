/**
 * One client socket: its subscriptions, the protocol it speaks, its limits
 * (rate, errors, send buffer) and cleanup. Kept small: an idle connection
 * should cost little more than the `ws` socket under it.
 */
import type { Duplex } from 'node:stream'
import type WebSocket from 'ws'
import debug from 'debug'
import type { ResolvedOptions } from '../options'
import { CloseCode, encode, encodeEvent, parseClientFrame, wsTextFrames, type ErrorCode, type ServerFrame } from '../protocol/protocol'
import type { Subscriber } from '../delivery/hub'
import type { Collab, Participant } from '../collab/collab'
import { collabOp } from '../collab/ops'
import type { Session, Sessions } from '../sessions/sessions'
import type { Core } from './transport'
import { boundedReplay, catchUp, heldAfter } from '../delivery/recovery'
export type { Core } from './transport'
import type { BusEvent, User } from '../types'

const log = debug('cms-realtime')

/** Shared by every connection without subscriptions; never mutated. */
const NO_TOPICS: string[] = []

/** Bytes a socket may hold corked within a delivery slice before they go out. */
const FLUSH_AT = 64 * 1024

export class Connection implements Subscriber, Session, Participant {
  /**
   * Active subscriptions. An array, not a Set: most connections hold one
   * or a few topics (at most `maxTopicsPerConnection`), and a one-element
   * array costs ~60 bytes against a Set's ~170.
   */
  private topics: string[] = NO_TOPICS
  /** Subscriptions being authorised or recovered; live events for them are held here. */
  private pending: Map<string, BusEvent[]> | undefined
  alive = true
  private closing = false
  /** The rate limit's current one-second window (whole seconds, so it stays a small integer). */
  private window = 0
  private messages = 0
  private errors = 0

  constructor(
    readonly ws: WebSocket,
    private readonly socket: Duplex,
    readonly user: User,
    private readonly core: Core,
  ) {}

  /** Deliver a live event; `frame` is the event encoded once for every subscriber. */
  deliver(event: BusEvent, frame: Buffer): void {
    const held = this.pending?.get(event.topic)
    if (held !== undefined) held.push(event)
    else if (this.topics.includes(event.topic)) this.write(wsTextFrames([frame]), 1)
  }

  /**
   * Consecutive events of one topic; `wire` is their frames, built once for
   * every subscriber. The topic check matters for a run that was cut short
   * and resumes later: a subscription revoked in between gets none of it.
   */
  deliverBatch(events: readonly BusEvent[], _frames: readonly Buffer[], wire: Buffer): void {
    const topic = events[0]!.topic
    const held = this.pending?.get(topic)
    if (held !== undefined) held.push(...events)
    else if (this.topics.includes(topic)) this.write(wire, events.length)
  }

  heldTopics(): readonly string[] {
    const collab = this.core.collab.topicsOf(this)
    if (this.pending === undefined && collab.length === 0) return this.topics
    return [...new Set([...this.topics, ...(this.pending?.keys() ?? []), ...collab])]
  }

  revoke(topic: string): void {
    this.unsubscribe(topic)
    this.core.collab.revoked(this, topic)
    this.send({ op: 'unsubscribed', topic, reason: 'forbidden' })
  }

  endSession(reason: string): void {
    this.close(CloseCode.SESSION_ENDED, reason)
  }

  resync(topic: string): void {
    // A subscription still being set up will get history or its own resync.
    if (this.topics.includes(topic)) this.send({ op: 'resync', topic })
  }

  send(frame: ServerFrame): void {
    this.write(wsTextFrames([Buffer.from(encode(frame))]), 0)
  }

  get open(): boolean {
    return !this.closing && this.ws.readyState === 1 /* OPEN */
  }

  sendEncoded(frame: Buffer): void {
    this.write(wsTextFrames([frame]), 0)
  }

  /**
   * Write complete frames (`events` of them are events) straight to the
   * socket rather than through `ws.send`: they were framed once for every
   * subscriber, and several go out in one write. This is safe because with
   * perMessageDeflate off `ws`'s Sender never queues: it writes pings and
   * close frames synchronously too, so whole frames interleave in call order.
   */
  private write(wire: Buffer, events: number): boolean {
    if (this.closing || this.ws.readyState !== 1 /* OPEN */) {
      this.core.counters.drops += events
      return false
    }
    if (this.ws.bufferedAmount > this.core.opts.maxBufferedBytes) {
      // A slow consumer is closed, not allowed to grow memory; it reconnects
      // and recovers from history (1013 = try again later).
      this.core.counters.slowConsumersClosed++
      this.core.counters.drops += events
      log('closing slow consumer: %d bytes queued', this.ws.bufferedAmount)
      this.close(CloseCode.TRY_AGAIN_LATER, 'slow consumer')
      return false
    }
    if (!this.core.gather(this.socket, wire, Math.min(FLUSH_AT, this.core.opts.maxBufferedBytes / 4))) this.socket.write(wire)
    this.core.counters.eventsDelivered += events
    return true
  }

  close(code: number, reason: string): void {
    if (this.closing) return
    this.closing = true
    this.core.flush(this.socket) // frames gathered in this slice go before the close frame
    this.ws.close(code, reason.slice(0, 120)) // a close reason holds at most 123 bytes
    // The close handshake waits behind whatever is queued; don't let a stuck
    // peer hold the socket (and its buffer) for ws's 30 s close timeout.
    setTimeout(() => this.ws.terminate(), 1000).unref()
  }

  /** Client messages; never throws. */
  onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    this.alive = true
    const opts = this.core.opts
    const window = Math.floor(performance.now() / 1000)
    if (window !== this.window) {
      this.window = window
      this.messages = 0
    }
    if (++this.messages > opts.maxMessagesPerSecond) {
      this.fail('rate_limited', `more than ${opts.maxMessagesPerSecond} messages per second`)
      return
    }
    if (isBinary) {
      this.fail('bad_request', 'binary frames are not part of the protocol')
      return
    }
    const parsed = parseClientFrame(data.toString(), opts.maxTopicLength)
    if (!parsed.ok) {
      this.fail(parsed.code, parsed.message, parsed.topic)
      return
    }
    const frame = parsed.frame
    switch (frame.op) {
      case 'ping':
        this.send({ op: 'pong' })
        return
      case 'unsubscribe':
        this.unsubscribe(frame.topic)
        this.send({ op: 'unsubscribed', topic: frame.topic })
        return
      case 'presence':
      case 'leave':
      case 'lock':
      case 'unlock':
        return collabOp(this.core.collab, this, frame)
      case 'subscribe':
        this.subscribe(frame.topic, frame.since).catch((err: unknown) => {
          log('subscribe to %s failed: %O', frame.topic, err)
          this.pending?.delete(frame.topic)
          this.unsubscribe(frame.topic)
          this.send({ op: 'error', code: 'bad_request', message: 'subscription failed', topic: frame.topic })
        })
    }
  }

  /** Subscriptions named in the handshake (`?topics=…&since=…`): as if `subscribe` frames had arrived first. */
  subscribeAll(topics: readonly string[], since: ReadonlyArray<string | undefined>): void {
    topics.forEach((topic, i) => {
      this.subscribe(topic, since[i]).catch((err: unknown) => {
        log('subscribe to %s failed: %O', topic, err)
        this.pending?.delete(topic)
        this.unsubscribe(topic)
        this.send({ op: 'error', code: 'bad_request', message: 'subscription failed', topic })
      })
    })
  }

  private async subscribe(topic: string, since: string | undefined): Promise<void> {
    if (this.topics.includes(topic)) {
      this.send({ op: 'subscribed', topic })
      return
    }
    if (this.pending?.has(topic)) return // already on its way; that one answers
    const opts = this.core.opts
    if (this.topics.length + (this.pending?.size ?? 0) >= opts.maxTopicsPerConnection) {
      this.fail('bad_request', `a connection may hold at most ${opts.maxTopicsPerConnection} topics`, topic)
      return
    }
    const held: BusEvent[] = []
    ;(this.pending ??= new Map()).set(topic, held)
    // A `reauthorize` meanwhile checks this pending topic too, and revokes it
    // (deleting it from `pending`) if access was withdrawn.
    const allowed = await this.core.sessions.allowed(this.user, topic)
    if (this.pending?.get(topic) !== held) return // unsubscribed meanwhile
    if (!allowed || this.closing) {
      this.pending.delete(topic)
      if (!allowed) this.send({ op: 'error', code: 'forbidden', message: 'not allowed to subscribe to this topic', topic })
      return
    }
    // Join first, then read history: an event published in between is both
    // held and in history, and is sent once (deduplicated by id below).
    this.topics = this.topics === NO_TOPICS ? [topic] : [...this.topics, topic]
    this.core.join(this, topic)
    const caught = await catchUp(this.core, topic, since)
    let replay = caught.replay
    const cursor = caught.cursor
    if (this.pending?.get(topic) !== held) return
    this.pending.delete(topic)
    if (this.pending.size === 0) this.pending = undefined // an idle connection keeps no empty map
    const out: ServerFrame[] = []
    if (replay === null) {
      // History no longer reaches back to `since`: the UI must refetch.
      out.push({ op: 'resync', topic }, { op: 'subscribed', topic, cursor, recovered: false })
      replay = []
    } else {
      out.push(since === undefined ? { op: 'subscribed', topic, cursor } : { op: 'subscribed', topic, recovered: true })
    }
    const recovered = boundedReplay(replay, held, opts.maxBufferedBytes - this.ws.bufferedAmount)
    if (since !== undefined) {
      if (out[0]!.op === 'resync' || recovered === null) this.core.counters.resynced++
      else this.core.counters.recovered++
    }
    if (recovered === null) {
      // More than the send buffer may hold: a refetch is cheaper than
      // queueing megabytes per client, and keeps the bound a bound.
      const last = replay.length > 0 ? replay[replay.length - 1]!.id : since
      out.length = 0
      out.push({ op: 'resync', topic }, { op: 'subscribed', topic, cursor: last, recovered: false })
    }
    const frames: Buffer[] = out.map((f) => Buffer.from(encode(f)))
    const events = recovered?.frames ?? heldAfter(replay, held).map(encodeEvent)
    // One write for the acknowledgement and everything recovered.
    this.write(wsTextFrames([...frames, ...events]), events.length)
  }

  unsubscribe(topic: string): void {
    this.pending?.delete(topic)
    const i = this.topics.indexOf(topic)
    if (i < 0) return
    this.topics = this.topics.length === 1 ? NO_TOPICS : this.topics.filter((t) => t !== topic)
    this.core.leave(this, topic)
  }

  /** Send an error frame; a connection that keeps erring is closed with 1008. */
  private fail(code: ErrorCode, message: string, topic?: string): void {
    this.core.counters.protocolErrors++
    this.send(topic === undefined ? { op: 'error', code, message } : { op: 'error', code, message, topic })
    if (++this.errors >= this.core.opts.maxProtocolErrors) this.close(CloseCode.POLICY, 'too many protocol errors')
  }

  /** Called once the socket is gone. */
  cleanup(): void {
    this.closing = true
    this.pending = undefined
    const topics = this.topics
    this.topics = NO_TOPICS
    for (const topic of topics) this.core.leave(this, topic)
    this.core.collab.gone(this)
    this.core.sessions.remove(this)
    this.core.closed(this)
  }
}
