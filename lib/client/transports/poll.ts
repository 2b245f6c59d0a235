/**
 * The client's long-polling transport: `GET <path>/poll` again at once
 * after every answer, each resuming every topic from its cursor (the
 * server keeps nothing between polls). A poll not answered well after the
 * server's hold limit is abandoned: something on the way cannot complete
 * it. This only runs the loop and says what became of it; the ladder
 * (fallback.ts) decides what to do.
 */
import { decodeCursors, encodeCursors } from '../cursor-vector'
import type { FetchLike } from '../types'

export interface PollHost {
  readonly fetch: FetchLike
  topics(): string[]
  cursorOf(topic: string): string | undefined
  /** A one-time ticket when the app signs in with a token; `null`: none could be had (the client took care of why). */
  ticket: (() => Promise<string | null>) | undefined
  /** An answer came: the transport works; `session`: where this tab's presence and lock requests go. */
  opened(session: string | undefined): void
  frame(frame: unknown): void
  /** A poll failed (`n` in a row, without an answer in between); `retryAfterMs` when the server asked for a wait. */
  failed(n: number, status: number | null, retryAfterMs: number | undefined): void
  /** The credentials are refused (401 with a fresh ticket, or without one). */
  signedOut(reason: string): void
}

/** Slack over the server's hold before a poll counts as one that cannot complete. */
const SLACK_MS = 10_000

export class PollTransport {
  private gen = 0
  private ctrl: AbortController | undefined
  private running = false
  private failures = 0
  /** Where each topic stands by the last answer: for topics the client keeps no cursor of (carried for presence only), so a poll for them waits. */
  private readonly at = new Map<string, string>()

  constructor(private readonly host: PollHost) {}

  get active(): boolean {
    return this.running
  }

  /** Poll `endpoint` until `close()`; false when there is nothing to carry. */
  start(endpoint: string, base: string, holdMs: number): boolean {
    this.close()
    if (this.host.topics().length === 0) return false
    this.running = true
    this.failures = 0
    void this.loop(++this.gen, new URL(endpoint, base).href, holdMs)
    return true
  }

  close(): void {
    this.gen++
    this.running = false
    this.ctrl?.abort()
    this.ctrl = undefined
  }

  private async loop(gen: number, endpoint: string, holdMs: number): Promise<void> {
    let ticket: string | null | undefined
    let fresh = false
    let session: string | undefined
    while (gen === this.gen) {
      const topics = this.host.topics()
      if (topics.length === 0) return this.close()
      if (this.host.ticket !== undefined && ticket == null) {
        ticket = await this.host.ticket()
        if (gen !== this.gen) return
        if (ticket === null) return this.close() // signed out, or left to the client's retry loop
        fresh = true
      }
      const url = new URL(endpoint)
      url.searchParams.set('topics', topics.join(','))
      const since = topics.map((t) => this.host.cursorOf(t) ?? this.at.get(t))
      if (since.some((c) => c !== undefined)) url.searchParams.set('since', encodeCursors(since))
      if (ticket != null) url.searchParams.set('ticket', ticket)
      // The same tab across polls: its presence and locks live on.
      if (session !== undefined) url.searchParams.set('session', session)
      const ctrl = new AbortController()
      this.ctrl = ctrl
      const timer = setTimeout(() => ctrl.abort(), holdMs + SLACK_MS)
      let status: number | null = null
      let retryAfterMs: number | undefined
      try {
        const r = await this.host.fetch(url.href, { cache: 'no-store', credentials: 'same-origin', signal: ctrl.signal })
        status = r.status
        if (r.status === 200) {
          const body = (await r.json()) as { cursor?: unknown; frames?: unknown; ticket?: unknown; session?: unknown }
          const cursors = typeof body.cursor === 'string' ? decodeCursors(body.cursor, topics.length) : null
          cursors?.forEach((c, i) => c !== undefined && this.at.set(topics[i]!, c))
          clearTimeout(timer)
          if (gen !== this.gen) return
          this.failures = 0
          ticket = typeof body.ticket === 'string' ? body.ticket : undefined
          fresh = false
          session = typeof body.session === 'string' ? body.session : undefined
          this.host.opened(session)
          for (const f of Array.isArray(body.frames) ? body.frames : []) {
            if (gen !== this.gen) return // a frame closed the transport (`closed`): the rest is not ours
            this.host.frame(f)
          }
          continue
        }
        if (r.status === 401) {
          // A ticket minted before a token refresh is refused: one fresh one, then it is the credentials.
          if (this.host.ticket !== undefined && !fresh) {
            ticket = undefined
            continue
          }
          clearTimeout(timer)
          this.close()
          return this.host.signedOut('unauthenticated')
        }
        const after = Number(r.headers?.get('retry-after'))
        if (r.status === 503 && Number.isFinite(after)) retryAfterMs = after * 1000
      } catch {
        // a network error, or the poll abandoned past its hold: counted below
      } finally {
        clearTimeout(timer)
      }
      if (gen !== this.gen) return
      ticket = undefined // it may have been spent on the failed poll
      this.host.failed(++this.failures, status, retryAfterMs)
      if (gen !== this.gen) return
      // Quick at first, then slower: a proxy's 502 during a deploy passes, a blocked route does not.
      await new Promise((r) => setTimeout(r, retryAfterMs ?? Math.min(1000 * 2 ** (this.failures - 1), 30_000)))
    }
  }
}
