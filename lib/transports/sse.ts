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
import type { Core } from './transport'
import { boundedReplay, catchUp, heldAfter } from '../delivery/recovery'
import type { Subscriber } from '../delivery/hub'
import { CloseCode, encodeEvent } from '../protocol/protocol'
import { encodeCursors } from '../client/cursor-vector'
import type { BusEvent, User } from '../types'
import type { Participant } from '../collab/collab'
import type { ServerFrame } from '../client/wire'
import type { HttpCollab } from './http-collab'
import { admit, fail, topicsQuery, type HttpSession, type HttpTransportOptions } from './http-admission'

const log = debug('cms-realtime')

export interface SseOptions extends HttpTransportOptions {
  /** Interval of the heartbeat frames, so idle proxies keep the stream and the client sees it breathe. */
  heartbeatMs: number
  /** `EventSource` reconnection delay the stream asks for (`retry:`). */
  retryMs?: number
  /** Has another request (or an upgrade) already arrived on `req`'s connection, pipelined behind it? */
  behind(req: IncomingMessage): 'request' | 'upgrade' | null
}

export class SseStreams {
  readonly streams = new Set<SseStream>()
  /** Sockets carrying an open stream: a stream owns its connection (see `pipelined`). */
  private readonly sockets = new WeakSet<object>()

  constructor(private readonly core: Core, private readonly options: SseOptions, private readonly collab: HttpCollab) {}

  /** Answer `GET <path>/events`: a 4xx for bad input, otherwise a stream that lasts until either side closes it. */
  async handle(req: IncomingMessage, res: ServerResponse, ctx: unknown, url: string): Promise<void> {
    const method = req.method ?? 'GET'
    if (method !== 'GET' && method !== 'HEAD') return void fail(res, 405, 'method_not_allowed', 'use GET', { Allow: 'GET, HEAD' })
    const params = new URL(url, 'http://x').searchParams
    const header = req.headers['last-event-id']
    const query = topicsQuery(res, this.core, params, typeof header === 'string' && header !== '' ? header : params.get('since'))
    if (query === null) return
    let beat: NodeJS.Timeout | undefined
    const stream = await admit(this.core, this.options, req, res, ctx, query.topics, (user) => {
      const s: SseStream = new SseStream(res, user, query.topics, query.since, this.core, () => {
        clearInterval(beat)
        this.streams.delete(s)
        this.collab.forget(s.session)
      })
      return s
    })
    if (stream === null) return
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
    stream.session = this.collab.register(stream)
    this.streams.add(stream)
    const socket = req.socket
    this.sockets.add(socket)
    // Data, not a `: ping` comment: EventSource hides comments, and the
    // client must see the stream breathe to tell a quiet one from one a
    // proxy holds (see client/transports/sse.ts).
    beat = setInterval(() => stream.write(BEAT), this.options.heartbeatMs)
    beat.unref()
    res.once('close', () => {
      this.sockets.delete(socket)
      stream.cleanup()
    })
    // The first frame at once, before any history is read: a client that
    // does not see it within seconds knows the stream is held on the way.
    // It names the session the tab's presence and lock requests go to (http-collab.ts).
    stream.write(`retry: ${this.options.retryMs ?? 2000}\n\ndata: {"op":"pong","session":"${stream.session}"}\n\n`)
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
class SseStream implements Subscriber, HttpSession, Participant {
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
  /** Where this tab's presence and lock requests go (`POST <path>/collab?session=`). */
  session = ''

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
    const own = this.revoked.size === 0 ? this.topics : this.topics.filter((t) => !this.revoked.has(t))
    const collab = this.core.collab.topicsOf(this)
    return collab.length === 0 ? own : [...new Set([...own, ...collab])]
  }

  /** Presence and locks answer on the stream, as on a socket. */
  get open(): boolean {
    return this.opened && !this.ended
  }

  send(frame: ServerFrame): void {
    this.frame(JSON.stringify(frame))
  }

  sendEncoded(frame: Buffer): void {
    this.frame(frame.toString())
  }

  revoke(topic: string): void {
    const present = this.core.collab.topicsOf(this).includes(topic)
    this.core.collab.revoked(this, topic)
    if (present && !this.index.has(topic)) this.frame(JSON.stringify({ op: 'unsubscribed', topic, reason: 'forbidden' }))
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
        const caught = await catchUp(this.core, topic, since)
        replay = caught.replay
        if (caught.cursor !== undefined) this.cursors[i] = caught.cursor
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
    this.core.collab.gone(this)
    this.core.sessions.remove(this)
    this.onCleanup()
  }
}

/** The stream's heartbeat, also its first frame: a message without `id`, so the browser's Last-Event-ID stays. */
const BEAT = 'data: {"op":"pong"}\n\n'

/** `data: <event JSON>\n\n`, made once per event for every stream (the frame is shared by all subscribers). */
const dataText = new WeakMap<Buffer, string>()
function dataOf(frame: Buffer): string {
  let text = dataText.get(frame)
  if (text === undefined) dataText.set(frame, (text = `data: ${frame.toString()}\n\n`))
  return text
}
