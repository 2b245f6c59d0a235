/**
 * Session life: how the door closes. A socket outlives the request that
 * opened it, so the CMS must be able to end it per user (logout, block), per
 * topic (lost access) and by time (session expiry). Every WebSocket
 * connection and every SSE stream is a `Session` here, so each rule applies
 * to every transport alike. Peers: Socket.IO `disconnectSockets()` /
 * `socketsLeave()`, Centrifugo's server-side disconnect/unsubscribe and token
 * `exp`, SignalR's `CloseOnAuthenticationExpiration`.
 */
import debug from 'debug'
import type { Counters } from '../counters'
import type { ResolvedOptions } from '../options'
import { userId } from '../users'
import type { Refusal } from '../server/handshake'
import type { ConnectionSelector, User } from '../types'
import { reserved } from '../protocol/protocol'

const log = debug('cms-realtime')

/** A WebSocket connection or an SSE stream, as session life sees it. */
export interface Session {
  readonly user: User
  /** Topics held, or being set up. */
  heldTopics(): readonly string[]
  /** Drop `topic` (the user may no longer read it) and tell the client `unsubscribed` with reason `forbidden`. */
  revoke(topic: string): void
  /** End the session: WebSocket close 4401, SSE `closed` frame; nothing is sent after this call. */
  endSession(reason: string): void
  /**
   * `false`: not a connection of its own, so not counted against
   * `maxConnections` or `maxConnectionsPerUser` (a polling tab's presence,
   * whose polls are counted), yet ended and revoked like one.
   */
  readonly counted?: false
}

/** setTimeout's limit; a later expiry re-arms. */
const MAX_TIMER = 2 ** 31 - 1

/** When the session of `user` ends: `user.expiresAt` as a Date or epoch milliseconds. */
export function expiryOf(user: User): number | undefined {
  if (typeof user !== 'object' || user === null || !('expiresAt' in user)) return undefined
  const at = (user as { expiresAt: unknown }).expiresAt
  const ms = at instanceof Date ? at.getTime() : at
  return typeof ms === 'number' && Number.isFinite(ms) ? ms : undefined
}

/**
 * A connection or stream being admitted: its `authenticate` (and the rest of
 * its checks) are in flight, so it is in no registry yet. `disconnect` calls
 * made meanwhile are replayed on it when it is added: a verdict that predates
 * a logout must not open a door the logout closed.
 */
export interface Admission {
  readonly since: number
}

/** `Retry-After` past `maxConnections`: between this and twice this, in seconds. */
const RETRY_AFTER_S = 5

/** Disconnects remembered for admissions in flight; past this, an admission that is older is ended to be safe. */
const MAX_REMEMBERED = 1024

export class Sessions {
  private readonly all = new Set<Session>()
  /** Admissions in flight, and the `disconnect` selectors issued since the oldest began. */
  private readonly admitting = new Set<Admission>()
  private ended: Array<{ seq: number; selector: ConnectionSelector; reason: string }> = []
  private seq = 0
  /** Disconnects at or before this were forgotten while admissions were in flight. */
  private forgotten = 0
  private readonly perUser = new Map<string, number>()
  /** Sessions that count (see Session.counted). */
  private count = 0
  private readonly expiry = new Map<Session, NodeJS.Timeout>()
  private sweep: NodeJS.Timeout | undefined
  private sweeping = false
  private closed = false

  constructor(
    private readonly opts: ResolvedOptions<never>,
    private readonly counters: Counters,
    private readonly onError: (where: string, err: unknown) => void,
  ) {}

  /** May `user` open one more connection or stream? Anonymous users are not counted. */
  admits(user: User): boolean {
    const id = userId(user)
    return id === undefined || (this.perUser.get(id) ?? 0) < this.opts.maxConnectionsPerUser
  }

  /**
   * Why one more connection or stream of `user` is refused now, or `null`:
   * the process-wide `maxConnections` (503, with a jittered `Retry-After`
   * so refused clients do not come back in one wave), then the per-user cap.
   * Checked after every await, right before the session is added.
   */
  full(user: User): Refusal | null {
    if (this.count >= this.opts.maxConnections) {
      return {
        status: 503, reason: 'over_capacity', message: `this server holds its maximum of ${this.opts.maxConnections} connections; retry later`,
        headers: { 'Retry-After': String(RETRY_AFTER_S + Math.floor(Math.random() * (RETRY_AFTER_S + 1))) },
      }
    }
    if (!this.admits(user)) {
      return { status: 429, reason: 'too_many_connections', message: `at most ${this.opts.maxConnectionsPerUser} connections and streams per user` }
    }
    return null
  }

  /** An admission starts: call before awaiting `authenticate`; `add` or `abandon` it after. */
  begin(): Admission {
    const a = { since: this.seq }
    this.admitting.add(a)
    return a
  }

  /** The admission came to nothing (refused, or the client left). */
  abandon(admission: Admission): void {
    this.admitting.delete(admission)
    if (this.admitting.size === 0) this.ended = []
  }

  /**
   * Register an open connection or stream. With its `admission`, a
   * `disconnect` that selected its user while it was being admitted ends it
   * now; returns false then (the session is already ended).
   */
  add(session: Session, admission?: Admission): boolean {
    if (admission !== undefined) {
      const missed = this.missed(session, admission)
      this.abandon(admission)
      if (missed !== undefined) {
        this.counters.sessionsEnded++
        session.endSession(missed)
        return false
      }
    }
    this.all.add(session)
    const id = session.counted === false ? undefined : userId(session.user)
    if (session.counted !== false) this.count++
    if (id !== undefined) this.perUser.set(id, (this.perUser.get(id) ?? 0) + 1)
    const at = expiryOf(session.user)
    if (at !== undefined) this.armExpiry(session, at)
    if (this.opts.revalidate !== undefined && this.sweep === undefined && !this.closed) {
      this.sweep = setInterval(() => {
        this.revalidateAll().catch((err: unknown) => this.onError('revalidate sweep', err))
      }, this.opts.revalidateMs)
      this.sweep.unref()
    }
    return true
  }

  /** Open connections and streams, every transport together (for `maxConnections`). */
  get size(): number {
    return this.count
  }

  /** The reason of a `disconnect` issued while `admission` was in flight that selects this session, if any. */
  private missed(session: Session, admission: Admission): string | undefined {
    if (admission.since < this.forgotten) return 'session ended'
    for (const e of this.ended) if (e.seq > admission.since && this.matches(session, e.selector)) return e.reason
    return undefined
  }

  remove(session: Session): void {
    if (!this.all.delete(session)) return
    if (session.counted !== false) this.count--
    const id = session.counted === false ? undefined : userId(session.user)
    if (id !== undefined) {
      const n = (this.perUser.get(id) ?? 1) - 1
      if (n > 0) this.perUser.set(id, n)
      else this.perUser.delete(id)
    }
    clearTimeout(this.expiry.get(session))
    this.expiry.delete(session)
  }

  select(selector?: ConnectionSelector): Session[] {
    const all = [...this.all]
    if (selector === undefined) return all
    if (typeof selector !== 'function' && !('user' in selector) && !('topic' in selector) && !validMatch(selector)) {
      throw new TypeError('cms-realtime: a selector is { user }, { topic }, { match: { field: value } } or a function of the user')
    }
    return all.filter((s) => this.matches(s, selector))
  }

  /**
   * `{ topic }` selects the topic and every topic below it (`project:1`
   * selects `project:1/item:7` too): a user removed from a project loses the
   * presence and lock of its items, which an editor tab holds on a
   * connection that may not subscribe to the project itself.
   */
  private matches(s: Session, selector: ConnectionSelector): boolean {
    if (typeof selector === 'function') {
      try {
        return selector(s.user) === true
      } catch (err) {
        this.onError('selector', err)
        return false
      }
    }
    if ('user' in selector) return userId(s.user) === String(selector.user)
    if ('match' in selector) {
      const user = s.user as Record<string, unknown> | null
      if (typeof user !== 'object' || user === null) return false
      return Object.entries(selector.match).every(([k, v]) => (Array.isArray(v) ? v.includes(user[k] as never) : user[k] === v))
    }
    const topic = selector.topic
    return s.heldTopics().some((t) => t === topic || (t.startsWith(topic) && t.charCodeAt(topic.length) === 47 /* / */))
  }

  /** End the selected sessions now; resolves to how many. */
  disconnect(selector: ConnectionSelector, reason: string): number {
    const chosen = this.select(selector)
    for (const s of chosen) this.end(s, reason)
    if (this.admitting.size > 0) {
      this.ended.push({ seq: ++this.seq, selector, reason })
      if (this.ended.length > MAX_REMEMBERED) this.forgotten = this.ended.shift()!.seq
    }
    // Connections and streams; a polling tab's presence ends with its polls, not as one more.
    return chosen.filter((c) => c.counted !== false).length
  }

  /**
   * Ask `authorize` again for every topic the selected sessions hold or are
   * setting up (a subscribe whose first answer predates the change is
   * covered too), and drop the refused ones. A throw counts as a refusal, as at
   * subscribe time. Resolves to how many subscriptions were dropped.
   */
  async reauthorize(selector?: ConnectionSelector): Promise<number> {
    const checks: Array<Promise<number>> = []
    for (const s of this.select(selector)) {
      for (const topic of s.heldTopics()) {
        checks.push(this.allowed(s.user, topic).then((ok) => {
          if (ok || !s.heldTopics().includes(topic)) return 0
          s.revoke(topic)
          if (s.counted === false) return 0 // the tab's presence there: its poll counts the topic
          this.counters.subscriptionsRevoked++
          return 1
        }))
      }
    }
    let n = 0
    for (const dropped of await Promise.all(checks)) n += dropped
    return n
  }

  /** `authorize(user, topic)`, never throwing: a throw is logged, counted, and means no. The library's own topics are no one's. */
  async allowed(user: User, topic: string): Promise<boolean> {
    if (reserved(topic)) return false
    try {
      return (await this.opts.authorize(user, topic)) === true
    } catch (err) {
      this.onError(`authorize(${topic})`, err)
      return false
    }
  }

  close(): void {
    this.closed = true
    clearInterval(this.sweep)
    this.sweep = undefined
    for (const t of this.expiry.values()) clearTimeout(t)
    this.expiry.clear()
  }

  private end(session: Session, reason: string): void {
    if (!this.all.has(session)) return
    if (session.counted !== false) this.counters.sessionsEnded++
    this.remove(session)
    session.endSession(reason)
  }

  private armExpiry(session: Session, at: number): void {
    const timer = setTimeout(() => {
      if (!this.all.has(session)) return
      if (Date.now() < at) return this.armExpiry(session, at) // past setTimeout's range
      log('session expired')
      try {
        this.end(session, 'session expired')
      } catch (err) {
        this.onError('session expiry', err)
      }
    }, Math.min(Math.max(0, at - Date.now()), MAX_TIMER))
    timer.unref()
    this.expiry.set(session, timer)
  }

  /**
   * One round of `revalidate`, once per user id and session (many tabs of one
   * session, one call; a user signed in on two devices has two sessions, and
   * signing out of one must not keep, nor end, the other); never overlapping.
   */
  private async revalidateAll(): Promise<void> {
    const revalidate = this.opts.revalidate
    if (revalidate === undefined || this.sweeping) return
    this.sweeping = true
    try {
      const verdicts = new Map<unknown, Promise<boolean | undefined>>()
      const ask = (user: User): Promise<boolean | undefined> => {
        const id = userId(user)
        const session = (user as { sessionId?: unknown } | null)?.sessionId
        const key = id === undefined ? user : typeof session === 'string' || typeof session === 'number' ? `${id}\u0000${session}` : id
        let v = verdicts.get(key)
        if (v === undefined) {
          v = Promise.resolve()
            .then(() => revalidate(user))
            .then((ok) => ok === true, (err: unknown) => {
              this.onError('revalidate', err)
              return undefined // unknown: keep the session, ask again next round
            })
          verdicts.set(key, v)
        }
        return v
      }
      await Promise.all([...this.all].map(async (s) => {
        if ((await ask(s.user)) === false) this.end(s, 'session no longer valid')
      }))
    } finally {
      this.sweeping = false
    }
  }
}

function validMatch(selector: object): boolean {
  const m = (selector as { match?: unknown }).match
  return typeof m === 'object' && m !== null && Object.keys(m).length > 0
}
