/**
 * Server-Sent Events: the fallback transport, for when a proxy or firewall
 * lets no WebSocket through. `GET <path>/events?topics=a,b[&since=V]`
 * streams the same frames as the WebSocket, each as one `data:` line. A
 * stream is a hub `Subscriber` like a socket, so authentication,
 * per-topic authorisation, history and recovery are the WebSocket's own.
 *
 * Every message's `id` is the cursor vector of the stream (see
 * client/cursor-vector.ts); `EventSource` sends the last one back as
 * `Last-Event-ID` when it reconnects, and the stream resumes every topic
 * where it stopped. A `since` query parameter (same encoding) lets a client
 * coming from the WebSocket resume too; `Last-Event-ID` wins over it.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import debug from 'debug'
import { boundedReplay, heldAfter, type Core } from './websocket'
import type { Subscriber } from '../delivery/hub'
import { sendJson } from '../server/http'
import { CloseCode, encodeEvent, validTopic } from '../protocol/protocol'
import type { Admission, Session } from '../sessions/sessions'
import { closing } from '../server/access'
import { decodeCursors, encodeCursors } from '../client/cursor-vector'
import type { BusEvent, MaybePromise, RefusalReason, User } from '../types'

const log = debug('cms-realtime')

export interface SseOptions {
  /** Interval of `: ping` comments, so idle proxies keep the stream. */
  heartbeatMs: number
  /** `EventSource` reconnection delay the stream asks for (`retry:`). */
  retryMs?: number
  /** Who is this? `undefined` or a refusal status when unknown. */
  authenticate(ctx: unknown): MaybePromise<{ user: User } | { status: 401 }>
  /** Count a refusal in `stats().refusals`. */
  refused(reason: RefusalReason): void
  /** Has another request (or an upgrade) already arrived on `req`'s connection, pipelined behind it? */
  behind(req: IncomingMessage): 'request' | 'upgrade' | null
  /** The request's admission, begun when it arrived (see Sessions.begin), and its end. */
  admission(req: IncomingMessage): Admission
  settle(req: IncomingMessage): void
  /** The server is shutting down: no stream opens. */
  closing(): boolean
}

export class SseStreams {
  readonly streams = new Set<SseStream>()
  /** Sockets carrying an open stream: a stream owns its connection (see `pipelined`). */
  private readonly sockets = new WeakSet<object>()

  constructor(private readonly core: Core, private readonly options: SseOptions) {}

  /** Answer `GET <path>/events`: a 4xx for bad input, otherwise a stream that lasts until either side closes it. */
  async handle(req: IncomingMessage, res: ServerResponse, ctx: unknown, url: string): Promise<void> {
    const method = req.method ?? 'GET'
    if (method !== 'GET' && method !== 'HEAD') return fail(res, 405, 'method_not_allowed', 'use GET', { Allow: 'GET, HEAD' })
    const opts = this.core.opts
    const params = new URL(url, 'http://x').searchParams
    const list = params.get('topics')
    if (list === null || list === '') return fail(res, 400, 'bad_topics', 'give the topics as ?topics=a,b')
    const topics = list.split(',')
    if (topics.length > opts.maxTopicsPerConnection) {
      return fail(res, 400, 'too_many_topics', `a stream may hold at most ${opts.maxTopicsPerConnection} topics`)
    }
    const bad = topics.find((t): boolean => !validTopic(t, opts.maxTopicLength))
    if (bad !== undefined) {
      return fail(res, 400, 'bad_topics', `invalid topic ${JSON.stringify(bad.slice(0, opts.maxTopicLength))}: ` +
        `1-${opts.maxTopicLength} characters of A-Z a-z 0-9 _ . : - / @`)
    }
    if (new Set(topics).size !== topics.length) return fail(res, 400, 'bad_topics', 'a topic is listed twice')
    const header = req.headers['last-event-id']
    const vector = typeof header === 'string' && header !== '' ? header : params.get('since')
    const since = vector === null ? topics.map(() => undefined) : decodeCursors(vector, topics.length)
    if (since === null) {
      return fail(res, 400, 'bad_cursor', 'the cursor (Last-Event-ID or ?since=) must hold one percent-encoded cursor per topic, joined by ","')
    }

    // Begun when the request arrived: a logout since is replayed on this stream when it is added.
    const admission = this.options.admission(req)
    try {
      await this.admit(req, res, ctx, method, topics, since, admission)
    } finally {
      this.options.settle(req)
    }
  }

  private async admit(
    req: IncomingMessage, res: ServerResponse, ctx: unknown, method: string, topics: string[], since: Array<string | undefined>, admission: Admission,
  ): Promise<void> {
    const who = await this.options.authenticate(ctx)
    if ('status' in who) {
      this.options.refused('unauthenticated')
      return fail(res, 401, 'unauthenticated', 'authentication required')
    }
    if (res.destroyed || req.socket.destroyed) return
    if (this.options.closing()) return fail(res, 503, 'shutting_down', closing().message)
    const sessions = this.core.sessions
    const full = sessions.full(who.user)
    if (full !== null) {
      this.options.refused(full.reason)
      return fail(res, full.status, full.reason, full.message, full.headers)
    }
    // Registered before `authorize` is awaited, as a WebSocket's pending
    // subscriptions are: a `reauthorize` meanwhile withdraws its topics and a
    // `disconnect` ends it, so an answer that predates the change lets nothing in.
    let beat: NodeJS.Timeout | undefined
    const stream = new SseStream(res, who.user, topics, since, this.core, () => {
      clearInterval(beat)
      this.streams.delete(stream)
    })
    if (!sessions.add(stream, admission)) return ended(res, this.options)
    // A client that leaves while `authorize` is awaited frees its slot at once.
    res.once('close', () => stream.cleanup())
    const verdicts = await Promise.all(topics.map((topic) => sessions.allowed(who.user, topic)))
    if (stream.isEnded) return ended(res, this.options)
    const forbidden = topics.filter((t, i) => !verdicts[i] || stream.withdrawn(t))
    if (forbidden.length > 0) {
      stream.cleanup()
      this.options.refused('forbidden')
      return fail(res, 403, 'forbidden', `not allowed to subscribe to ${forbidden.join(', ')}`)
    }
    // The client may have gone while we awaited; 'close' would not come again.
    if (res.destroyed || req.socket.destroyed) return stream.cleanup()
    const behind = this.options.behind(req)
    if (behind !== null) {
      // A request already waits behind this one: it would wait forever (see `pipelined`).
      stream.cleanup()
      if (behind === 'request') this.options.refused('pipelined_request') // an upgrade counts its own
      req.socket.destroy()
      return
    }

    // The phrase named: `authenticate` (Strapi's ctx.unauthorized) may have left another on `res`.
    res.writeHead(200, STATUS_CODES[200], {
      'Content-Type': 'text/event-stream; charset=utf-8',
      // no-transform: a compressing proxy would buffer the stream.
      'Cache-Control': 'no-store, no-transform',
      // nginx buffers proxied responses unless told not to.
      'X-Accel-Buffering': 'no',
    })
    if (method === 'HEAD') {
      stream.cleanup()
      return void res.end()
    }
    stream.opened = true
    this.streams.add(stream)
    const socket = req.socket
    this.sockets.add(socket)
    beat = setInterval(() => stream.write(': ping\n\n'), this.options.heartbeatMs)
    beat.unref()
    res.once('close', () => {
      this.sockets.delete(socket)
      stream.cleanup()
    })
    stream.write(`retry: ${this.options.retryMs ?? 2000}\n\n`)
    await stream.start()
  }

  /** Is `socket` carrying an open stream? */
  owns(socket: object): boolean {
    return this.sockets.has(socket)
  }

  /**
   * A request arrived on a connection that carries an open stream (pipelined
   * behind it, or sent after it): its answer would queue behind a response
   * that never ends, so the request would hang forever. A stream owns its
   * connection; the connection is closed, and `EventSource` reconnects.
   */
  pipelined(req: IncomingMessage): boolean {
    if (!this.sockets.has(req.socket)) return false
    log('closing a connection that sent a request behind its open event stream')
    req.socket.destroy()
    return true
  }

  /** End every stream (server shutting down): browsers reconnect, maybe to another node, and resume. */
  closeAll(): void {
    for (const stream of this.streams) stream.end()
  }
}

/** One event stream over several topics. */
class SseStream implements Subscriber, Session {
  /** Live events held while a topic's history is being replayed. */
  private readonly held = new Map<string, BusEvent[]>()
  private readonly index: Map<string, number>
  private readonly joined = new Set<string>()
  /** Topics `reauthorize` took away; they keep their slot in the cursor vector. */
  private readonly revoked = new Set<string>()
  private ended = false
  private cleaned = false
  /** The 200 is written; before that, nothing is (the stream is still being admitted). */
  opened = false

  constructor(
    private readonly res: ServerResponse,
    readonly user: User,
    private readonly topics: string[],
    private readonly cursors: Array<string | undefined>,
    private readonly core: Core,
    private readonly onCleanup: () => void,
  ) {
    this.index = new Map(topics.map((t, i) => [t, i]))
  }

  get isEnded(): boolean {
    return this.ended
  }

  /** Was `topic` taken away (`reauthorize`) while the stream was being admitted? */
  withdrawn(topic: string): boolean {
    return this.revoked.has(topic)
  }

  heldTopics(): readonly string[] {
    return this.revoked.size === 0 ? this.topics : this.topics.filter((t) => !this.revoked.has(t))
  }

  revoke(topic: string): void {
    if (this.revoked.has(topic) || !this.index.has(topic)) return
    this.revoked.add(topic)
    this.held.delete(topic)
    if (this.joined.delete(topic)) this.core.leave(this, topic)
    this.frame(JSON.stringify({ op: 'unsubscribed', topic, reason: 'forbidden' }))
  }

  /** The stream's last frame says why it ends, so `EventSource` users know not to reconnect blindly. */
  endSession(reason: string): void {
    this.frame(JSON.stringify({ op: 'closed', code: CloseCode.SESSION_ENDED, reason }))
    this.end()
    this.cleanup()
  }

  /** Join each topic, then replay its history, in topic order (so the vector only ever advances). */
  async start(): Promise<void> {
    for (const topic of this.topics) {
      if (this.ended) return
      if (this.revoked.has(topic)) continue
      const held: BusEvent[] = []
      this.held.set(topic, held)
      this.joined.add(topic)
      this.core.join(this, topic)
      const i = this.index.get(topic)!
      const since = this.cursors[i]
      let replay: BusEvent[] | null
      try {
        replay = since === undefined ? [] : await this.core.history(topic, since)
        if (since === undefined || replay === null) this.cursors[i] = await this.core.latest(topic)
        // Events published before the history read may still be queued for
        // delivery: let them reach `held`, where they are deduplicated
        // against the replay (as the WebSocket's subscribe does).
        await this.core.drained()
      } catch (err) {
        log('SSE history for %s failed: %O', topic, err)
        return this.end()
      }
      if (this.ended || this.revoked.has(topic)) continue
      this.held.delete(topic)
      // Bounded like the WebSocket's: past the send buffer, resync instead.
      const recovered = replay === null ? null
        : boundedReplay(replay, held, this.core.opts.maxBufferedBytes - this.res.writableLength)
      if (since !== undefined) this.core.counters[recovered === null ? 'resynced' : 'recovered']++
      if (recovered === null) {
        if (replay !== null && replay.length > 0) this.cursors[i] = replay[replay.length - 1]!.id
        this.frame(JSON.stringify({ op: 'resync', topic }))
        this.frame(JSON.stringify({ op: 'subscribed', topic, cursor: this.cursors[i], recovered: false }))
        for (const event of heldAfter(replay ?? [], held)) this.event(event, encodeEvent(event))
        continue
      }
      this.frame(JSON.stringify(since === undefined ? { op: 'subscribed', topic, cursor: this.cursors[i] } : { op: 'subscribed', topic, recovered: true }))
      recovered.events.forEach((event, k) => this.event(event, recovered.frames[k]!))
    }
  }

  deliver(event: BusEvent, frame: Buffer): void {
    const held = this.held.get(event.topic)
    if (held !== undefined) held.push(event)
    else if (this.joined.has(event.topic)) this.event(event, frame)
  }

  /**
   * A run of one topic's events in one write: the cursor vector is encoded
   * once around the topic's slot, and each event's `data:` text is shared
   * by every stream (see `dataOf`). Within a delivery slice the socket is
   * held, so runs of several topics leave in one syscall too.
   */
  deliverBatch(events: readonly BusEvent[], frames: readonly Buffer[], _wire: Buffer): void {
    const topic = events[0]!.topic
    const held = this.held.get(topic)
    if (held !== undefined) {
      held.push(...events)
      return
    }
    if (!this.joined.has(topic)) return
    const i = this.index.get(topic)!
    const before = i === 0 ? '' : `${encodeCursors(this.cursors.slice(0, i))},`
    const after = i === this.cursors.length - 1 ? '' : `,${encodeCursors(this.cursors.slice(i + 1))}`
    let text = ''
    for (let k = 0; k < events.length; k++) text += `id: ${before}${encodeURIComponent(events[k]!.id)}${after}\n${dataOf(frames[k]!)}`
    this.cursors[i] = events[events.length - 1]!.id
    const socket = this.res.socket
    if (socket != null) this.core.hold(socket, 64 * 1024, text.length)
    if (this.write(text)) this.core.counters.eventsDelivered += events.length
    else this.core.counters.drops += events.length
  }

  /** Also while the topic's history replays: a redundant refetch is harmless, a missed one is not. */
  resync(topic: string): void {
    if (this.joined.has(topic)) this.frame(JSON.stringify({ op: 'resync', topic }))
  }

  private event(event: BusEvent, frame: Buffer): void {
    this.cursors[this.index.get(event.topic)!] = event.id
    // Counted delivered or dropped, never both.
    if (this.frame(frame.toString())) this.core.counters.eventsDelivered++
    else this.core.counters.drops++
  }

  /** One message; its id is the whole vector, as it stands after this frame. */
  private frame(json: string): boolean {
    return this.write(`id: ${encodeCursors(this.cursors)}\ndata: ${json}\n\n`)
  }

  write(text: string): boolean {
    if (!this.opened || this.ended || this.res.destroyed || this.res.writableEnded) return false
    if (this.res.writableLength > this.core.opts.maxBufferedBytes) {
      // A slow consumer is cut off, not allowed to grow memory: destroyed
      // rather than ended, since a client that does not read would never
      // take the end either (with `Connection: close` it kept the socket,
      // its buffer and its subscriptions). EventSource reconnects with
      // Last-Event-ID and recovers from history.
      this.core.counters.slowConsumersClosed++
      log('cutting off slow SSE consumer: %d bytes queued', this.res.writableLength)
      this.ended = true
      this.res.destroy()
      this.cleanup()
      return false
    }
    this.res.write(text)
    return true
  }

  end(): void {
    if (this.ended) return
    this.ended = true
    if (this.opened) this.res.end()
  }

  /** Leave every topic and the registries; idempotent (called at once when we end it, and on 'close'). */
  cleanup(): void {
    this.ended = true
    if (this.cleaned) return
    this.cleaned = true
    this.held.clear()
    for (const topic of this.joined) this.core.leave(this, topic)
    this.joined.clear()
    this.core.sessions.remove(this)
    this.onCleanup()
  }
}

/** `data: <event JSON>\n\n`, made once per event for every stream (the frame is shared by all subscribers). */
const dataText = new WeakMap<Buffer, string>()
function dataOf(frame: Buffer): string {
  let text = dataText.get(frame)
  if (text === undefined) dataText.set(frame, (text = `data: ${frame.toString()}\n\n`))
  return text
}

/** The session ended (a logout) while the stream was being admitted: what a signed-out client gets. */
function ended(res: ServerResponse, options: SseOptions): void {
  options.refused('unauthenticated')
  fail(res, 401, 'unauthenticated', 'the session ended')
}

function fail(res: ServerResponse, status: number, error: string, reason: string, headers: Record<string, string> = {}): void {
  sendJson(res, status, { error, reason }, headers)
}
