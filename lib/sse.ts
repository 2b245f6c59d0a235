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
import type { IncomingMessage, ServerResponse } from 'node:http'
import debug from 'debug'
import type { Core } from './connection'
import type { Subscriber } from './hub'
import { sendJson } from './http-routes'
import { encodeEvent, validTopic } from './protocol'
import { decodeCursors, encodeCursors } from './client/cursor-vector'
import type { BusEvent, MaybePromise, User } from './types'

const log = debug('cms-realtime')

export interface SseOptions {
  /** Interval of `: ping` comments, so idle proxies keep the stream. */
  heartbeatMs: number
  /** `EventSource` reconnection delay the stream asks for (`retry:`). */
  retryMs?: number
  /** Who is this? `undefined` or a refusal status when unknown. */
  authenticate(ctx: unknown): MaybePromise<{ user: User } | { status: 401 }>
}

export class SseStreams {
  readonly streams = new Set<SseStream>()

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

    const who = await this.options.authenticate(ctx)
    if ('status' in who) return fail(res, 401, 'unauthenticated', 'authentication required')
    const forbidden: string[] = []
    for (const topic of topics) {
      let ok = false
      try {
        ok = (await opts.authorize(who.user, topic)) === true
      } catch (err) {
        log('authorize(%s) threw: %O', topic, err)
      }
      if (!ok) forbidden.push(topic)
    }
    if (forbidden.length > 0) return fail(res, 403, 'forbidden', `not allowed to subscribe to ${forbidden.join(', ')}`)
    if (res.destroyed) return

    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      // no-transform: a compressing proxy would buffer the stream.
      'Cache-Control': 'no-store, no-transform',
      // nginx buffers proxied responses unless told not to.
      'X-Accel-Buffering': 'no',
    })
    if (method === 'HEAD') return void res.end()
    const stream = new SseStream(res, topics, since, this.core)
    this.streams.add(stream)
    const beat = setInterval(() => stream.write(': ping\n\n'), this.options.heartbeatMs)
    beat.unref()
    res.once('close', () => {
      clearInterval(beat)
      this.streams.delete(stream)
      stream.cleanup()
    })
    stream.write(`retry: ${this.options.retryMs ?? 2000}\n\n`)
    await stream.start()
  }

  /** End every stream (server shutting down): browsers reconnect, maybe to another node, and resume. */
  closeAll(): void {
    for (const stream of this.streams) stream.end()
  }
}

/** One event stream over several topics. */
class SseStream implements Subscriber {
  /** Live events held while a topic's history is being replayed. */
  private readonly held = new Map<string, BusEvent[]>()
  private readonly index: Map<string, number>
  private readonly joined = new Set<string>()
  private ended = false

  constructor(
    private readonly res: ServerResponse,
    private readonly topics: string[],
    private readonly cursors: Array<string | undefined>,
    private readonly core: Core,
  ) {
    this.index = new Map(topics.map((t, i) => [t, i]))
  }

  /** Join each topic, then replay its history, in topic order (so the vector only ever advances). */
  async start(): Promise<void> {
    for (const topic of this.topics) {
      if (this.ended) return
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
      } catch (err) {
        log('SSE history for %s failed: %O', topic, err)
        return this.end()
      }
      if (this.ended) return
      this.held.delete(topic)
      if (replay === null) {
        this.frame(JSON.stringify({ op: 'resync', topic }))
        this.frame(JSON.stringify({ op: 'subscribed', topic, cursor: this.cursors[i], recovered: false }))
        replay = []
      } else {
        this.frame(JSON.stringify(since === undefined ? { op: 'subscribed', topic, cursor: this.cursors[i] } : { op: 'subscribed', topic, recovered: true }))
      }
      const sent = new Set<string>()
      for (const event of replay) {
        sent.add(event.id)
        this.event(event, encodeEvent(event))
      }
      for (const event of held) if (!sent.has(event.id)) this.event(event, encodeEvent(event))
    }
  }

  deliver(event: BusEvent, frame: Buffer): void {
    const held = this.held.get(event.topic)
    if (held !== undefined) held.push(event)
    else this.event(event, frame)
  }

  /** Also while the topic's history replays: a redundant refetch is harmless, a missed one is not. */
  resync(topic: string): void {
    if (this.joined.has(topic)) this.frame(JSON.stringify({ op: 'resync', topic }))
  }

  private event(event: BusEvent, frame: Buffer): void {
    this.cursors[this.index.get(event.topic)!] = event.id
    this.frame(frame.toString())
    this.core.counters.eventsDelivered++
  }

  /** One message; its id is the whole vector, as it stands after this frame. */
  private frame(json: string): void {
    this.write(`id: ${encodeCursors(this.cursors)}\ndata: ${json}\n\n`)
  }

  write(text: string): void {
    if (this.ended || this.res.destroyed) {
      this.core.counters.drops++
      return
    }
    if (this.res.writableLength > this.core.opts.maxBufferedBytes) {
      // A slow consumer is ended, not allowed to grow memory; EventSource
      // reconnects with Last-Event-ID and recovers from history.
      this.core.counters.slowConsumersClosed++
      this.core.counters.drops++
      log('ending slow SSE consumer: %d bytes queued', this.res.writableLength)
      return this.end()
    }
    this.res.write(text)
  }

  end(): void {
    if (this.ended) return
    this.ended = true
    this.res.end()
  }

  cleanup(): void {
    this.ended = true
    this.held.clear()
    for (const topic of this.joined) this.core.leave(this, topic)
    this.joined.clear()
  }
}

function fail(res: ServerResponse, status: number, error: string, reason: string, headers: Record<string, string> = {}): void {
  sendJson(res, status, { error, reason }, headers)
}
