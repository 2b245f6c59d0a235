/**
 * The client's Server-Sent Events transport: one `EventSource` for every
 * subscribed topic, resuming each from its cursor (`?since=`, then
 * `Last-Event-ID` on the browser's own reconnects). The client decides
 * when to open and close it; this only runs one stream at a time and says
 * what became of it.
 */
import { encodeCursors } from '../cursor-vector'
import type { EventSourceCtor, EventSourceLike } from '../types'

const OPEN = 1 // EventSource.OPEN
const CLOSED = 2 // EventSource.CLOSED

export interface SseHost {
  readonly ES: EventSourceCtor
  /** The topics to carry and where each resumes, read when the stream opens. */
  topics(): string[]
  cursorOf(topic: string): string | undefined
  /** A one-time ticket when the app signs in with a token; `null`: none could be had (the client took care of why). */
  ticket: (() => Promise<string | null>) | undefined
  opened(): void
  frame(data: unknown): void
  /**
   * The stream failed: `spent` (its ticket cannot be presented again, the
   * probe loop reopens), `refused` (an HTTP error: ask why at `url`), or
   * `retrying` (the browser reconnects by itself), or `held`: no first
   * frame, or no heartbeat, within its time (something on the way holds
   * the streamed response; `errored`: the stream also failed meanwhile).
   */
  failed(how: 'spent' | 'refused' | 'retrying' | 'held', url: string, errored?: boolean): void
}

/** How long a stream may stay silent: `firstFrameMs` for its first frame, then `heartbeatMs` plus slack between frames. */
export interface Watch {
  firstFrameMs: number
  heartbeatMs: number
}

export class SseTransport {
  private es: EventSourceLike | undefined
  /** Bumped by each open and close: an await that comes back to a newer one gives up. */
  private gen = 0
  private quiet: ReturnType<typeof setTimeout> | undefined
  /** A frame came on this stream: the network passes it. */
  delivered = false

  constructor(private readonly host: SseHost) {}

  /** A stream exists (opening or open). */
  get active(): boolean {
    return this.es !== undefined
  }

  /** The stream is open and delivering. */
  get open(): boolean {
    return this.es?.readyState === OPEN
  }

  /** (Re)open the stream at `endpoint` for the current topics; false when there is nothing to carry. */
  async start(endpoint: string, base: string, watch?: Watch): Promise<boolean> {
    this.close()
    const gen = this.gen
    let ticket: string | null = null
    if (this.host.ticket !== undefined && this.host.topics().length > 0) {
      ticket = await this.host.ticket()
      if (ticket === null || gen !== this.gen) return true
    }
    // Read after the await: topics and cursors may have moved meanwhile.
    const topics = this.host.topics()
    if (topics.length === 0) return false
    const url = new URL(endpoint, base)
    url.searchParams.set('topics', topics.join(','))
    if (topics.some((t) => this.host.cursorOf(t) !== undefined)) url.searchParams.set('since', encodeCursors(topics.map((t) => this.host.cursorOf(t))))
    if (ticket !== null) url.searchParams.set('ticket', ticket)
    const es = new this.host.ES(url.href)
    this.es = es
    this.delivered = false
    let errored = false
    // A stream that opens and then delivers nothing cannot be told from a
    // quiet one but by time: the server sends a frame at once and a
    // heartbeat every interval (data, which EventSource shows).
    const silent = (ms: number): void => {
      if (watch === undefined) return
      clearTimeout(this.quiet)
      this.quiet = setTimeout(() => {
        if (this.es !== es) return
        this.close()
        this.host.failed('held', url.href, errored)
      }, ms)
    }
    silent(watch?.firstFrameMs ?? 0)
    es.onopen = () => this.es === es && this.host.opened()
    es.onmessage = (e) => {
      if (this.es !== es) return
      this.delivered = true
      silent(watch!.heartbeatMs + Math.max(5000, watch!.heartbeatMs / 2))
      this.host.frame(e.data)
    }
    // EventSource retries by itself (with Last-Event-ID) unless the answer
    // was an HTTP error; the WebSocket probe retries the rest.
    es.onerror = () => {
      if (this.es !== es) return
      errored = true
      // A ticket is spent: EventSource's own retry would present it again.
      if (ticket !== null) {
        this.close()
        return this.host.failed('spent', url.href)
      }
      if (es.readyState === CLOSED) {
        this.close()
        return this.host.failed('refused', url.href)
      }
      this.host.failed('retrying', url.href)
    }
    return true
  }

  close(): void {
    clearTimeout(this.quiet)
    this.gen++
    this.es?.close()
    this.es = undefined
  }
}
