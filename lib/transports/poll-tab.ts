/**
 * A polling tab: what a WebSocket connection is for a socket, for a client
 * that can only poll. It subscribes to its topics (catching up from the
 * first poll's cursors, through delivery/recovery.ts), keeps what arrives
 * between two polls in a bounded buffer, and hands it to the next poll in
 * one answer, so a burst reaches a poller as it reaches a socket. It is the
 * session (counted against the connection limits, ended by a logout,
 * narrowed by `reauthorize`) and the participant of its presence and locks.
 *
 * Past `maxBufferedBytes` of events waiting (a tab that stopped polling),
 * they are dropped and the next poll gets `resync` for their topics. A tab
 * that sends no poll for `idleMs` is gone, as a socket that drops. A poll
 * whose cursors are not where the last answer left them (an answer lost on
 * the way) is not this tab's: the tab ends and a new one catches up from
 * history, so nothing is lost or repeated.
 */
import { STATUS_CODES, type ServerResponse } from 'node:http'
import debug from 'debug'
import type { ServerFrame } from '../client/wire'
import { encodeCursors } from '../client/cursor-vector'
import type { Participant } from '../collab/collab'
import type { Subscriber } from '../delivery/hub'
import { catchUp, heldAfter } from '../delivery/recovery'
import { CloseCode, encodeEvent } from '../protocol/protocol'
import type { Session } from '../sessions/sessions'
import type { BusEvent, User } from '../types'
import type { Core } from './transport'

const log = debug('cms-realtime')

/** One held poll: where the tab's next answer goes. */
interface Reader {
  res: ServerResponse
  timer: NodeJS.Timeout
  /** A fresh ticket for the next poll, minted when the answer goes (see PollOptions.nextTicket). */
  ticket: (() => string) | undefined
}

/** An event frame as text, made once per event for every polling tab (the frame is shared by all subscribers). */
const texts = new WeakMap<Buffer, string>()
function textOf(frame: Buffer): string {
  let text = texts.get(frame)
  if (text === undefined) texts.set(frame, (text = frame.toString()))
  return text
}

export class PollTab implements Subscriber, Session, Participant {
  id = ''
  /** The answer waiting to go: frames as JSON text, in order. */
  private frames: string[] = []
  private bytes = 0
  private events = 0
  /** Topics whose waiting events were dropped (over the bound): `resync` leads the next answer. */
  private readonly dropped = new Set<string>()
  /** Live events held while a topic's history is read. */
  private readonly catching = new Map<string, BusEvent[]>()
  private readonly index: Map<string, number>
  private readonly joined = new Set<string>()
  private readonly revoked = new Set<string>()
  /** The cursor vector the last answer gave: the next poll of this tab names it as `since`. */
  private answered: string
  private reader: Reader | undefined
  private soon: NodeJS.Immediate | undefined
  private idle: NodeJS.Timeout | undefined
  private ended = false

  constructor(
    readonly user: User,
    readonly topics: readonly string[],
    private readonly cursors: Array<string | undefined>,
    private readonly core: Core,
    private readonly idleMs: number,
    private readonly onEnd: (tab: PollTab) => void,
  ) {
    this.index = new Map(topics.map((t, i) => [t, i]))
    this.answered = encodeCursors(cursors)
    this.wait()
  }

  get open(): boolean {
    return !this.ended
  }

  get isEnded(): boolean {
    return this.ended
  }

  /** A poll of this tab is held now. */
  get reading(): boolean {
    return this.reader !== undefined
  }

  cleanup(): void {
    this.end()
  }

  /** A poll with these topics and cursors continues this tab. */
  continues(topics: readonly string[], since: string): boolean {
    return !this.ended && since === this.answered && topics.length === this.topics.length && topics.every((t, i) => t === this.topics[i])
  }

  withdrawn(topic: string): boolean {
    return this.revoked.has(topic)
  }

  heldTopics(): readonly string[] {
    const own = this.revoked.size === 0 ? this.topics : this.topics.filter((t) => !this.revoked.has(t))
    const collab = this.core.collab.topicsOf(this)
    return collab.length === 0 ? own : [...new Set([...own, ...collab])]
  }

  /** Join each topic, then read its history since the first poll's cursor, in topic order. */
  async start(): Promise<void> {
    for (const topic of this.topics) {
      if (this.ended) return
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
        log('poll history for %s failed: %O', topic, err)
        return this.end()
      }
      if (this.ended || this.revoked.has(topic)) continue
      this.catching.delete(topic)
      if (caught.cursor !== undefined) this.cursors[i] = caught.cursor
      if (since !== undefined) this.core.counters[caught.replay === null ? 'resynced' : 'recovered']++
      if (caught.replay === null) this.push(JSON.stringify({ op: 'resync', topic }))
      // Without a cursor the first answer says where the topic starts: it goes at once.
      if (since === undefined || caught.replay === null) {
        this.push(JSON.stringify({ op: 'subscribed', topic, cursor: this.cursors[i], ...(since === undefined ? {} : { recovered: false }) }))
      }
      const replay = caught.replay ?? []
      for (const event of [...replay, ...heldAfter(replay, held)]) this.take(event, encodeEvent(event))
    }
  }

  /** The next poll of this tab: answered at once when something waits, else held until something does or `holdMs`. */
  read(res: ServerResponse, holdMs: number, ticket: (() => string) | undefined): void {
    if (this.ended) return void res.destroy()
    // The client gave up on a poll still held here (a reload, a timeout on its side): that one goes now, empty.
    if (this.reader !== undefined) this.flush(true)
    clearTimeout(this.idle)
    const reader: Reader = { res, ticket, timer: setTimeout(() => this.reader === reader && this.flush(), holdMs) }
    reader.timer.unref()
    this.reader = reader
    res.once('close', () => {
      if (this.reader !== reader) return
      // Gone before its answer: nothing was taken, the next poll gets it all.
      clearTimeout(reader.timer)
      this.reader = undefined
      this.wait()
    })
    if (this.frames.length > 0 || this.dropped.size > 0) this.answerSoon()
  }

  deliver(event: BusEvent, frame: Buffer): void {
    const held = this.catching.get(event.topic)
    if (held !== undefined) held.push(event)
    else if (this.joined.has(event.topic)) this.take(event, frame)
  }

  deliverBatch(events: readonly BusEvent[], frames: readonly Buffer[]): void {
    const held = this.catching.get(events[0]!.topic)
    if (held !== undefined) held.push(...events)
    else if (this.joined.has(events[0]!.topic)) for (let k = 0; k < events.length; k++) this.take(events[k]!, frames[k]!)
  }

  resync(topic: string): void {
    if (this.joined.has(topic)) this.push(JSON.stringify({ op: 'resync', topic }))
  }

  revoke(topic: string): void {
    const present = this.core.collab.topicsOf(this).includes(topic)
    this.core.collab.revoked(this, topic)
    const subscribed = this.index.has(topic) && !this.revoked.has(topic)
    if (subscribed) {
      this.revoked.add(topic)
      this.catching.delete(topic)
      if (this.joined.delete(topic)) this.core.leave(this, topic)
    }
    if (subscribed || present) this.push(JSON.stringify({ op: 'unsubscribed', topic, reason: 'forbidden' }))
  }

  /** The end of the session goes with the poll held now; the next poll is refused by `authenticate` (401). */
  endSession(reason: string): void {
    this.close(CloseCode.SESSION_ENDED, reason)
  }

  /** Answer the held poll with a last `closed` frame, and end. */
  close(code: number, reason: string): void {
    if (this.ended) return
    this.push(JSON.stringify({ op: 'closed', code, reason }))
    this.flush()
    this.end()
  }

  send(frame: ServerFrame): void {
    this.push(JSON.stringify(frame))
  }

  sendEncoded(frame: Buffer): void {
    this.push(frame.toString())
  }

  /** Leave every topic, presence and the registries; idempotent. A poll still held is cut (the client polls again and gets a new tab). */
  end(): void {
    if (this.ended) return
    this.ended = true
    clearTimeout(this.idle)
    if (this.soon !== undefined) clearImmediate(this.soon)
    if (this.reader !== undefined) {
      clearTimeout(this.reader.timer)
      this.reader.res.destroy()
      this.reader = undefined
    }
    this.frames = []
    this.catching.clear()
    for (const topic of this.joined) this.core.leave(this, topic)
    this.joined.clear()
    this.core.collab.gone(this)
    this.core.sessions.remove(this)
    this.onEnd(this)
  }

  /**
   * One event into the waiting answer. Past `maxBufferedBytes` (nobody
   * polls), what waits of its kind is dropped: the next poll gets `resync`
   * for those topics, and the cursor moves past them.
   */
  private take(event: BusEvent, frame: Buffer): void {
    if (this.ended) return
    const i = this.index.get(event.topic)!
    this.cursors[i] = event.id
    if (this.dropped.has(event.topic)) return
    if (this.bytes + frame.length > this.core.opts.maxBufferedBytes) return this.overflow()
    this.frames.push(textOf(frame))
    this.bytes += frame.length
    this.events++
    this.answerSoon()
  }

  private overflow(): void {
    this.core.counters.slowConsumersClosed++
    this.core.counters.drops += this.events
    log('a polling tab stopped polling: %d events dropped, resync on its next poll', this.events)
    const kept: string[] = []
    for (const f of this.frames) if (!f.startsWith('{"op":"event"')) kept.push(f)
    for (const t of this.joined) this.dropped.add(t)
    this.frames = kept
    this.bytes = kept.reduce((n, f) => n + f.length, 0)
    this.events = 0
  }

  private push(json: string): void {
    if (this.ended) return
    this.frames.push(json)
    this.bytes += json.length
    this.answerSoon()
  }

  /** After the current delivery slice, so a burst's events leave in one answer. */
  private answerSoon(): void {
    if (this.soon === undefined && this.reader !== undefined) {
      this.soon = setImmediate(() => {
        this.soon = undefined
        this.flush()
      })
    }
  }

  /** Answer the held poll with everything waiting (nothing, when `empty`): one complete response, `Content-Length`, never cached. */
  private flush(empty = false): void {
    const reader = this.reader
    if (reader === undefined) return
    this.reader = undefined
    clearTimeout(reader.timer)
    const frames: string[] = []
    if (!empty) {
      for (const t of this.dropped) frames.push(JSON.stringify({ op: 'resync', topic: t }))
      this.dropped.clear()
      frames.push(...this.frames)
      this.core.counters.eventsDelivered += this.events
      this.frames = []
      this.bytes = 0
      this.events = 0
      this.answered = encodeCursors(this.cursors)
    }
    // Cursors and session ids are URL-safe: no JSON escaping to do.
    const ticket = reader.ticket === undefined ? '' : `,"ticket":"${reader.ticket()}"`
    const body = `{"cursor":"${this.answered}","session":"${this.id}"${ticket},"frames":[${frames.join(',')}]}`
    if (!reader.res.destroyed && !reader.res.writableEnded) {
      // A flat header list: the cheapest form for Node to write, on the path every answer takes.
      reader.res.writeHead(200, STATUS_CODES[200], [
        'Content-Type', 'application/json; charset=utf-8', 'Content-Length', String(Buffer.byteLength(body)), 'Cache-Control', 'no-store',
      ]).end(body)
    }
    if (!this.ended) this.wait()
  }

  /** No poll held: the tab has `idleMs` to send the next one. */
  private wait(): void {
    clearTimeout(this.idle)
    this.idle = setTimeout(() => this.end(), this.idleMs)
    this.idle.unref()
  }
}
