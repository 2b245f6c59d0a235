/**
 * The plain-HTTP door: every request under `path` that is not an upgrade
 * (config, the 426 for a stripped upgrade, tickets, diagnostics, the client
 * bundle) and the HTTP transports (the SSE stream, the long poll). Host and Origin are
 * checked here once, for every route, before anything is served.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import type { ResolvedOptions } from '../options'
import type { Core } from '../transports/websocket'
import { CloseCode } from '../protocol/protocol'
import { HttpCollab } from '../transports/http-collab'
import { Polls } from '../transports/poll'
import { SseStreams } from '../transports/sse'
import type { FallbackTransport, RefusalReason } from '../types'
import { closing, type Access } from './access'
import { serveClient } from './client-asset'
import type { Diagnostics } from './diagnostics'
import type { Refusal } from './handshake'
import { isOurs, pathnameOf, route, sendJson, type Reply, type RouteState } from './http'
import { checkHost, checkOrigin, clientAddress, ownCors } from './origin'

export interface HttpHost<Ctx> {
  readonly core: Core
  readonly diagnostics: Diagnostics
  /** The request body the app's body parser already read. */
  bodyOf: ((ctx: Ctx) => unknown) | undefined
  readonly closed: boolean
  readonly enabled: boolean
  refused(reason: RefusalReason): void
  error(where: string, err: unknown): void
}

export class HttpDoor<Ctx> {
  readonly sse: SseStreams
  readonly polls: Polls
  /** Presence and lock requests of tabs on SSE or long polling. */
  readonly collab: HttpCollab
  /** The newest request seen on each connection: an SSE stream must be the last (see SseStreams.pipelined). */
  private readonly newest = new WeakMap<object, IncomingMessage>()
  /** Connections with an upgrade pipelined behind a response: no stream may open on them. */
  private readonly upgradeBehind = new WeakSet<object>()
  private readonly routeState: RouteState
  private readonly opts: ResolvedOptions<Ctx>

  constructor(private readonly host: HttpHost<Ctx>, private readonly access: Access<Ctx>) {
    this.opts = host.core.opts as ResolvedOptions<Ctx>
    const self = this
    this.routeState = {
      path: this.opts.path,
      heartbeatMs: this.opts.heartbeatMs,
      get webSocketEnabled() {
        return host.enabled
      },
      get fallback() {
        return self.fallbackOffered()
      },
      pollHoldMs: this.opts.pollHoldMs,
      sawPlainGet: (req, client, seen) => host.diagnostics.stripped(req, client, seen),
      refuse: (reason) => host.refused(reason),
    }
    const admission = {
      authenticate: async (ctx: unknown) => {
        const user = await access.identify(ctx as Ctx)
        return user === undefined ? { status: 401 as const } : { user }
      },
      refused: (reason: RefusalReason) => host.refused(reason),
      admission: (req: IncomingMessage) => access.arrival(req),
      settle: (req: IncomingMessage) => access.settle(req),
      closing: () => host.closed,
    }
    this.collab = new HttpCollab(host.core, {
      authenticate: admission.authenticate,
      refused: admission.refused,
      parsedBody: (ctx) => host.bodyOf?.(ctx as Ctx),
    })
    this.sse = new SseStreams(host.core, {
      ...admission,
      heartbeatMs: this.opts.heartbeatMs,
      // Node parses pipelined requests at once: a request may already wait
      // behind this stream, or an upgrade (which counts its own refusal).
      behind: (req) => {
        if (this.upgradeBehind.has(req.socket)) return 'upgrade'
        const n = this.newest.get(req.socket)
        return n !== undefined && n !== req ? 'request' : null
      },
    }, this.collab)
    this.polls = new Polls(host.core, {
      ...admission,
      holdMs: this.opts.pollHoldMs,
      // The header the ticket was turned back into (see Access.exchange), sealed again for the next poll.
      nextTicket: (req) => {
        const authorization = req.headers.authorization
        return !access.hadTicket(req) || authorization === undefined ? undefined : () => access.tickets.mint(authorization)
      },
    }, this.collab)
  }

  /**
   * First in line for every request (a `request` listener put before the
   * app's): a request behind an open stream is refused before the app sees
   * it, and a stream's ticket and admission start before the app's middleware.
   */
  readonly onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    try {
      this.newest.set(req.socket, req)
      if (this.sse.pipelined(req)) this.host.refused('pipelined_request')
      else if (this.transportOf(pathnameOf(req.url)) !== undefined) {
        // Before the app's middleware, so its own auth sees the bearer token,
        // and a logout while it looks the session up reaches this stream.
        this.access.exchange(req)
        this.access.arrival(req)
        res.once('close', () => this.access.settle(req))
      } else if (pathnameOf(req.url) === `${this.opts.path}/collab`) this.access.exchange(req)
    } catch (err) {
      this.host.error('request', err)
    }
  }

  /** End every stream and answer every poll: the server shuts down (`going`) or the channel was switched off. */
  closeAll(going: boolean): void {
    this.sse.closeAll()
    this.polls.closeAll(going ? CloseCode.GOING_AWAY : CloseCode.DISABLED, going ? 'server shutting down' : 'disabled by server')
  }

  /** An upgrade was pipelined behind a response on `socket`: true when that response is an open stream (cut it). */
  upgradePipelined(socket: Duplex): boolean {
    this.upgradeBehind.add(socket)
    return this.sse.owns(socket)
  }

  /** The reply for a plain HTTP request to our routes, or `undefined` when the path is not ours. */
  route(req: IncomingMessage, url: string | undefined = req.url, trusted = this.opts.trustProxy ?? false): Reply | undefined {
    const pathname = pathnameOf(url)
    return isOurs(pathname, this.opts.path) ? route(req, pathname, this.routeState, clientAddress(req, trusted)) : undefined
  }

  /** A request whose path is ours: answer it on the raw `res`. `false` when no route matched. */
  async serve(req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: string | undefined): Promise<boolean> {
    // A reason phrase an earlier middleware left (Koa sets one with every
    // `ctx.status`) would otherwise go out with our status: `200 Unauthorized`.
    res.statusMessage = ''
    const trusted = this.access.trusted(ctx)
    // DNS rebinding: a page on another name is same-origin with itself.
    const host = checkHost(req, this.opts.hostAllowed, trusted)
    if (host !== null) {
      this.host.refused(host.reason)
      sendJson(res, host.status, { error: host.reason, reason: host.message })
      return true
    }
    // Our routes carry our CORS headers only: never an app middleware's.
    const origin = checkOrigin(req, this.opts.originAllowed, this.opts.requireOrigin, trusted)
    if (!origin.ok && origin.threw !== undefined) this.host.error('allowedOrigins', origin.threw)
    ownCors(res, origin.ok ? origin.cors : undefined)
    if (await this.serveStreaming(req, res, ctx, url, origin.ok ? null : origin.refusal, trusted)) return true
    const reply = this.route(req, url, trusted)
    if (reply === undefined) return false
    res.writeHead(reply.status, reply.headers).end(reply.body) // Node omits the body for HEAD
    return true
  }

  /** The fallbacks on offer right now: none when the channel is off, unless `fallbackWhenDisabled`. */
  fallbackOffered(): readonly FallbackTransport[] {
    return this.host.enabled || this.opts.fallbackWhenDisabled ? this.opts.fallback : []
  }

  /** The HTTP transport served at `pathname`, if it is configured. */
  private transportOf(pathname: string): FallbackTransport | undefined {
    const t = pathname === `${this.opts.path}/events` ? 'sse' : pathname === `${this.opts.path}/poll` ? 'poll' : undefined
    return t !== undefined && this.opts.fallback.includes(t) ? t : undefined
  }

  /**
   * The fallback and diagnostics routes, which need the adapter's `ctx` or
   * stream their answer. `false` when `url` is none of them.
   */
  private async serveStreaming(
    req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: string | undefined, originRefusal: Refusal | null, trusted: boolean,
  ): Promise<boolean> {
    const pathname = pathnameOf(url)
    const forbidden = (): true => {
      this.host.refused('origin')
      sendJson(res, 403, { error: 'origin', reason: originRefusal!.message })
      return true
    }
    const transport = this.transportOf(pathname)
    if (transport !== undefined && !this.host.closed) {
      // The same door as the upgrade: a cross-site page must not read the stream.
      if (originRefusal !== null) return forbidden()
      if (!this.fallbackOffered().includes(transport)) {
        sendJson(res, 503, { error: 'disabled', reason: 'no fallback transport is offered now; see GET <path>/config' })
        return true
      }
      if (this.badTicket(req, res)) return true
      await (transport === 'sse' ? this.sse : this.polls).handle(req, res, ctx, url ?? '/')
      return true
    }
    if (pathname === `${this.opts.path}/collab` && this.opts.fallback.length > 0) {
      if (originRefusal !== null) return forbidden()
      if (this.host.closed) {
        sendJson(res, 503, { error: 'shutting_down', reason: closing().message })
        return true
      }
      if (this.badTicket(req, res)) return true
      await this.collab.handle(req, res, ctx, url ?? '/')
      return true
    }
    if (pathname === `${this.opts.path}/diagnostics`) {
      if (originRefusal !== null && req.method === 'POST') return forbidden()
      await this.host.diagnostics.handle(req, res, url ?? '/', () => this.host.bodyOf?.(ctx), clientAddress(req, trusted))
      return true
    }
    if (pathname === `${this.opts.path}/ticket`) {
      await this.serveTicket(req, res, ctx, originRefusal)
      return true
    }
    if (pathname === `${this.opts.path}/client.js`) {
      await serveClient(req, res)
      return true
    }
    return false
  }

  /** A ticket on the request that does not open (spent, forged, expired): answered 401, so the client fetches a new one. */
  private badTicket(req: IncomingMessage, res: ServerResponse): boolean {
    const bad = this.access.exchange(req)
    if (bad === null) return false
    this.host.refused(bad.reason)
    sendJson(res, bad.status, { error: bad.reason, reason: bad.message })
    return true
  }

  /**
   * `POST <path>/ticket`: seal the request's `Authorization` into a ticket,
   * once `authenticate` accepts it (a bad token is a 401 now, not at the
   * socket). `OPTIONS` answers an allowed cross-origin preflight.
   */
  private async serveTicket(req: IncomingMessage, res: ServerResponse, ctx: Ctx, originRefusal: Refusal | null): Promise<void> {
    if (originRefusal !== null) {
      this.host.refused('origin')
      return sendJson(res, 403, { error: 'origin', reason: originRefusal.message })
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'Access-Control-Allow-Methods': 'POST', 'Access-Control-Allow-Headers': 'Authorization', 'Access-Control-Max-Age': '600',
      }).end()
      return
    }
    if (req.method !== 'POST') {
      this.host.refused('bad_method')
      return sendJson(res, 405, { error: 'method_not_allowed', reason: 'use POST' }, { Allow: 'POST, OPTIONS' })
    }
    const authorization = req.headers.authorization
    if (authorization === undefined || authorization.trim() === '') {
      return sendJson(res, 400, { error: 'no_credentials', reason: 'send the token to seal as Authorization: Bearer <token>' })
    }
    if (this.host.closed) return sendJson(res, 503, { error: 'shutting_down', reason: closing().message })
    if ((await this.access.identify(ctx)) === undefined) {
      this.host.refused('unauthenticated')
      return sendJson(res, 401, { error: 'unauthenticated', reason: 'authentication required' })
    }
    sendJson(res, 200, { ticket: this.access.tickets.mint(authorization), expiresInMs: this.access.tickets.ttlMs })
  }
}
