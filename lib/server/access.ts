/**
 * Who is asking, for every transport alike: the ticket a browser traded its
 * token for, `authenticate`, the app's proxy trust, and the admission that
 * lets a logout reach a connection whose checks are still in flight. The
 * WebSocket door and the HTTP door both go through here, so each rule
 * lives once.
 */
import type { IncomingMessage } from 'node:http'
import type { ResolvedOptions } from '../options'
import { expiryOf, type Admission, type Sessions } from '../sessions/sessions'
import { ticketOf, Tickets } from '../sessions/tickets'
import type { User } from '../types'
import type { Refusal } from './handshake'

export class Access<Ctx> {
  readonly tickets: Tickets
  /** Each request's ticket, redeemed once: the refusal if it was bad. */
  private readonly exchanged = new WeakMap<IncomingMessage, Refusal | null>()
  /** Requests that came with a ticket (it is gone from their URL once exchanged). */
  private readonly ticketed = new WeakSet<IncomingMessage>()
  /** Admissions by request, begun when it arrives, before the app's middleware looks the session up. */
  private readonly arrivals = new WeakMap<IncomingMessage, Admission>()

  constructor(
    private readonly opts: ResolvedOptions<Ctx>,
    private readonly sessions: Sessions,
    private readonly trustOf: ((ctx: Ctx) => boolean) | undefined,
    private readonly error: (where: string, err: unknown) => void,
  ) {
    this.tickets = new Tickets(opts.ticketSecret, opts.ticketTtlMs)
  }

  /**
   * `authenticate`, for the handshake and every fallback request alike:
   * the user, or `undefined` to refuse (nothing returned, a throw, or a
   * session whose `expiresAt` has passed).
   */
  async identify(ctx: Ctx): Promise<User | undefined> {
    if (this.opts.authenticate === undefined) return null
    let user: User = null
    try {
      user = await this.opts.authenticate(ctx)
    } catch (err) {
      this.error('authenticate', err)
      return undefined
    }
    if (user === null || user === undefined || user === false) return undefined
    const expires = expiryOf(user)
    return expires !== undefined && expires <= Date.now() ? undefined : user
  }

  /**
   * Turn the request's `ticket` back into its `Authorization` header (see
   * tickets.ts), once per request; a bad ticket is a 401, whatever else the
   * request carries, so the client learns to fetch a new one.
   */
  exchange(req: IncomingMessage): Refusal | null {
    const done = this.exchanged.get(req)
    if (done !== undefined) return done
    const ticket = ticketOf(req.url)
    let refusal: Refusal | null = null
    if (ticket !== undefined) {
      // Off the URL before the app's middleware sees it: an access log
      // (Strapi's, morgan) then shows the route, not a 500-character ticket.
      req.url = withoutTicket(req.url!)
      this.ticketed.add(req)
      const r = this.tickets.redeem(ticket)
      if (r.ok) req.headers.authorization = r.authorization
      else refusal = { status: 401, reason: 'unauthenticated', message: `${r.why}: get a new one from POST ${this.opts.path}/ticket` }
    }
    this.exchanged.set(req, refusal)
    return refusal
  }

  /** Did the request come with a ticket (`exchange` has removed it from `req.url`)? */
  hadTicket(req: IncomingMessage): boolean {
    return this.ticketed.has(req) || ticketOf(req.url) !== undefined
  }

  /** Does the app trust its proxy's forwarding headers for this request? Option `trustProxy` wins. */
  trusted(ctx: Ctx): boolean {
    if (this.opts.trustProxy !== undefined) return this.opts.trustProxy
    try {
      return this.trustOf?.(ctx) === true
    } catch (err) {
      this.error('trustProxy', err)
      return false
    }
  }

  /** The request's admission (see Sessions.begin), begun the first time this is asked. */
  arrival(req: IncomingMessage): Admission {
    let a = this.arrivals.get(req)
    if (a === undefined) this.arrivals.set(req, (a = this.sessions.begin()))
    return a
  }

  /** The request is admitted, refused or gone. */
  settle(req: IncomingMessage): void {
    const a = this.arrivals.get(req)
    if (a === undefined) return
    this.arrivals.delete(req)
    this.sessions.abandon(a)
  }
}

export function closing(): Refusal {
  return { status: 503, reason: 'shutting_down', message: 'the server is shutting down' }
}

/** `url` without its `ticket` query parameter (the rest kept as sent). */
function withoutTicket(url: string): string {
  const q = url.indexOf('?')
  const rest = url.slice(q + 1).split('&').filter((kv) => !kv.startsWith('ticket='))
  return rest.length === 0 ? url.slice(0, q) : `${url.slice(0, q)}?${rest.join('&')}`
}
