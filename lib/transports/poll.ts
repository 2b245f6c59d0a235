/**
 * Long polling: the last push transport, for networks that pass neither a
 * WebSocket nor a stream (a proxy that compresses or buffers responses
 * until they end, an antivirus shield, an HTTP/1.0 hop). Every answer is a
 * complete response, so every intermediary passes it.
 *
 *   GET <path>/poll?topics=a,b[&since=V][&ticket=T]
 *   → 200 {"cursor": V', "session": S, "frames": [ …the WebSocket's frames, in order… ]}
 *
 * A poll is held until something is waiting for it (an event, a `resync`,
 * the end of the session), then answered at once; after `pollHoldMs` it is
 * answered with no frames. The client polls again at once with `cursor`.
 *
 * Why stateless, as Mercure and Centrifugo's HTTP streams resume, rather
 * than a server-side queue per client as SignalR and Socket.IO keep: each
 * poll is a fresh subscription that resumes from its cursor through
 * delivery/recovery.ts, the guarantee every transport shares. So nothing
 * waits in memory for a client that stopped polling (history is the only
 * buffer, and a cursor older than it gets `resync`), and any node may
 * answer the next poll: no sticky sessions. Each poll is authenticated and
 * authorised like a stream, counted while held like a stream, and ended by
 * a logout or `reauthorize` at once.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import debug from 'debug'
import type { Core } from './transport'
import { catchUp, heldAfter } from '../delivery/recovery'
import type { Subscriber } from '../delivery/hub'
import { CloseCode, encodeEvent } from '../protocol/protocol'
import { encodeCursors } from '../client/cursor-vector'
import type { BusEvent, User } from '../types'
import { userId } from '../users'
import { admit, fail, topicsQuery, type HttpSession, type HttpTransportOptions } from './http-admission'
import type { HttpCollab } from './http-collab'
import { PollTab, type TabPoll } from './poll-tab'

const log = debug('cms-realtime')

export interface PollOptions extends HttpTransportOptions {
  /** Longest a poll is held before it is answered empty (under common proxy read timeouts). */
  holdMs: number
  /**
   * A fresh ticket for the next poll when this one came with one, minted
   * when the answer goes (a token-signed-in client needs no round trip per
   * poll; each poll is still authenticated, so an expired token ends it).
   */
  nextTicket(req: IncomingMessage): (() => string) | undefined
}

/** A polling tab that sends no poll for this long is gone (its presence and locks keep their graces). */
const TAB_IDLE_MS = 15_000

export class Polls {
  /** Polls held now. */
  readonly held = new Set<Poll>()
  /** Polling tabs served here, by session id (see poll-tab.ts). */
  private readonly tabs = new Map<string, PollTab>()

  constructor(private readonly core: Core, private readonly options: PollOptions, private readonly collab: HttpCollab) {}

  /** Answer `GET <path>/poll`: a 4xx for bad input, otherwise one JSON answer once something waits or the hold ends. */
  async handle(req: IncomingMessage, res: ServerResponse, ctx: unknown, url: string): Promise<void> {
    if ((req.method ?? 'GET') !== 'GET') return void fail(res, 405, 'method_not_allowed', 'use GET', { Allow: 'GET' })
    const params = new URL(url, 'http://x').searchParams
    const query = topicsQuery(res, this.core, params, params.get('since'))
    if (query === null) return
    const poll = await admit(this.core, this.options, req, res, ctx, query.topics, (user) => {
      const p: Poll = new Poll(res, user, query.topics, query.since, this.core, this.options.nextTicket(req), () => this.held.delete(p))
      return p
    })
    if (poll === null) return
    this.held.add(poll)
    poll.hold(this.options.holdMs)
    await poll.start(this.tabOf(poll.user, params.get('session')))
  }

  /** The tab this poll continues (same session, same user), or a new one: its presence and locks live across polls. */
  private tabOf(user: User, session: string | null): PollTab {
    const known = session === null ? undefined : this.tabs.get(session)
    if (known !== undefined && known.open && userId(known.user) === userId(user)) return known
    const tab = new PollTab(user, this.core, TAB_IDLE_MS, (t) => {
      this.tabs.delete(t.id)
      this.collab.forget(t.id)
    })
    tab.id = this.collab.register(tab)
    this.tabs.set(tab.id, tab)
    this.core.sessions.add(tab)
    return tab
  }

  /**
   * Answer every held poll now with a `closed` frame (the server shuts down,
   * 1001, or the channel was switched off, 4000): the client reads config
   * again and polls, maybe another node, from its cursors.
   */
  closeAll(code: number, reason: string): void {
    for (const poll of this.held) poll.close(code, reason)
  }
}

/** One held poll over several topics: a subscriber until it is answered. */
class Poll implements Subscriber, HttpSession, TabPoll {
  /** The answer's frames, as JSON text, in order. */
  private readonly frames: string[] = []
  private bytes = 0
  private events = 0
  /** Live events held while a topic's history is read. */
  private readonly catching = new Map<string, BusEvent[]>()
  private readonly index: Map<string, number>
  private readonly joined = new Set<string>()
  private readonly revoked = new Set<string>()
  /** Answered, or gone: nothing more is taken. */
  private done = false
  private full = false
  private timer: NodeJS.Timeout | undefined
  private soon: NodeJS.Immediate | undefined
  private tab: PollTab | undefined

  constructor(
    private readonly res: ServerResponse,
    readonly user: User,
    private readonly topics: string[],
    private readonly cursors: Array<string | undefined>,
    private readonly core: Core,
    private readonly ticket: (() => string) | undefined,
    private readonly onDone: () => void,
  ) {
    this.index = new Map(topics.map((t, i) => [t, i]))
  }

  get isEnded(): boolean {
    return this.done
  }

  withdrawn(topic: string): boolean {
    return this.revoked.has(topic)
  }

  heldTopics(): readonly string[] {
    return this.revoked.size === 0 ? this.topics : this.topics.filter((t) => !this.revoked.has(t))
  }

  /** Answer empty after `ms`, if nothing came first. */
  hold(ms: number): void {
    this.timer = setTimeout(() => this.answer(), ms)
    this.timer.unref()
  }

  /** Join each topic, then read its history since the cursor, in topic order; anything found (or waiting for the tab) is answered at once. */
  async start(tab: PollTab): Promise<void> {
    if (this.done) return
    this.tab = tab
    for (const json of tab.attach(this)) this.push(json)
    for (const topic of this.topics) {
      if (this.done) return
      if (this.revoked.has(topic)) continue
      const held: BusEvent[] = []
      this.catching.set(topic, held)
      this.joined.add(topic)
      this.core.join(this, topic)
      const i = this.index.get(topic)!
      const since = this.cursors[i]
      let caught
      try {
        caught = await catchUp(this.core, topic, since)
      } catch (err) {
        // Answered with what it has: the client polls again from its cursors.
        log('poll history for %s failed: %O', topic, err)
        return this.answer()
      }
      if (this.done || this.revoked.has(topic)) continue
      this.catching.delete(topic)
      if (caught.cursor !== undefined) this.cursors[i] = caught.cursor
      if (since !== undefined) this.core.counters[caught.replay === null ? 'resynced' : 'recovered']++
      if (caught.replay === null) this.push(JSON.stringify({ op: 'resync', topic }))
      // A poll without a cursor learns where it starts: it is answered at once, and the next one resumes from there.
      if (since === undefined || caught.replay === null) this.push(JSON.stringify({ op: 'subscribed', topic, cursor: this.cursors[i], recovered: since === undefined ? undefined : false }))
      for (const event of [...(caught.replay ?? []), ...heldAfter(caught.replay ?? [], held)]) this.take(event, encodeEvent(event))
    }
    if (this.frames.length > 0) this.answerSoon()
  }

  deliver(event: BusEvent, frame: Buffer): void {
    const held = this.catching.get(event.topic)
    if (held !== undefined) held.push(event)
    else if (this.joined.has(event.topic) && this.take(event, frame)) this.answerSoon()
  }

  deliverBatch(events: readonly BusEvent[], frames: readonly Buffer[]): void {
    const topic = events[0]!.topic
    const held = this.catching.get(topic)
    if (held !== undefined) {
      held.push(...events)
      return
    }
    if (!this.joined.has(topic)) return
    for (let k = 0; k < events.length; k++) if (!this.take(events[k]!, frames[k]!)) break
    this.answerSoon()
  }

  resync(topic: string): void {
    if (!this.joined.has(topic) || this.done) return
    this.push(JSON.stringify({ op: 'resync', topic }))
    this.answerSoon()
  }

  revoke(topic: string): void {
    if (this.revoked.has(topic) || !this.index.has(topic)) return
    this.revoked.add(topic)
    this.catching.delete(topic)
    if (this.joined.delete(topic)) this.core.leave(this, topic)
    if (this.done) return
    this.push(JSON.stringify({ op: 'unsubscribed', topic, reason: 'forbidden' }))
    this.answerSoon()
  }

  /** Answered at once with the end of the session; the next poll is refused by `authenticate` (401). */
  endSession(reason: string): void {
    if (this.done) return
    this.push(JSON.stringify({ op: 'closed', code: CloseCode.SESSION_ENDED, reason }))
    this.answer()
  }

  close(code: number, reason: string): void {
    if (this.done) return
    this.push(JSON.stringify({ op: 'closed', code, reason }))
    this.answer()
  }

  /** A frame for the tab (presence, locks): into this answer, which goes soon. */
  offer(json: string): boolean {
    if (this.done) return false
    this.push(json)
    this.answerSoon()
    return true
  }

  /**
   * Take one event into the answer, or refuse it once the answer holds
   * `maxBufferedBytes`: the answer goes then, and the next poll reads the
   * rest from history (the cursor stops at the last event taken), so a
   * burst is never a resync here and a poll's memory stays bounded.
   */
  private take(event: BusEvent, frame: Buffer): boolean {
    if (this.done || this.full) return false
    if (this.events > 0 && this.bytes + frame.length > this.core.opts.maxBufferedBytes) {
      this.full = true
      this.answerSoon()
      return false
    }
    this.cursors[this.index.get(event.topic)!] = event.id
    this.frames.push(frame.toString())
    this.bytes += frame.length
    this.events++
    return true
  }

  private push(json: string): void {
    this.frames.push(json)
    this.bytes += json.length
  }

  /** After the current delivery slice, so a burst's events leave in one answer. */
  private answerSoon(): void {
    if (this.soon === undefined && !this.done) this.soon = setImmediate(() => this.answer())
  }

  /** One complete response: `Content-Length`, no chunking, never cached. */
  answer(): void {
    if (this.done) return
    const session = this.tab === undefined ? '' : `,"session":${JSON.stringify(this.tab.id)}`
    const body = `{"cursor":${JSON.stringify(encodeCursors(this.cursors))}${session}${this.ticket === undefined ? '' : `,"ticket":${JSON.stringify(this.ticket())}`},"frames":[${this.frames.join(',')}]}`
    this.cleanup()
    const res = this.res
    if (res.destroyed || res.writableEnded) return
    this.core.counters.eventsDelivered += this.events
    res.writeHead(200, STATUS_CODES[200], {
      'Content-Type': 'application/json; charset=utf-8',
      'Content-Length': String(Buffer.byteLength(body)),
      'Cache-Control': 'no-store',
    }).end(body)
  }

  /** Leave every topic and the registries; idempotent (called when answered, and when the client leaves). */
  cleanup(): void {
    if (this.done) return
    this.done = true
    clearTimeout(this.timer)
    if (this.soon !== undefined) clearImmediate(this.soon)
    this.catching.clear()
    for (const topic of this.joined) this.core.leave(this, topic)
    this.joined.clear()
    this.core.sessions.remove(this)
    this.tab?.detach(this)
    this.onDone()
  }
}
