/**
 * The framework-free core: owns the `ws` server (noServer), the hub, the bus
 * and the HTTP routes. The Koa and Express adapters are thin wrappers over
 * this object's public methods.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import debug from 'debug'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import { MemoryBus } from './bus/memory'
import { Collab } from './collab/collab'
import { MemoryCollabStore, type LockHolder, type PresenceMember } from './collab/store'
import { Connection, type Core, type Counters } from './connection'
import { Delivery } from './delivery'
import { checkUpgrade, type Refusal } from './handshake'
import { Hub } from './hub'
import { Diagnostics } from './diagnostics'
import { SseStreams } from './sse'
import { serveClient } from './client-asset'
import { isOurs, pathnameOf, route, sendJson, type Reply, type RouteState } from './http-routes'
import { resolveOptions, type ResolvedOptions } from './options'
import { checkHost, checkOrigin, clientAddress, ownCors } from './origin'
import { CloseCode, validTopic } from './protocol'
import { decodeCursors } from './client/cursor-vector'
import { expiryOf, Sessions, type Admission } from './sessions'
import { ticketOf, Tickets } from './tickets'
import { onSocketError, Upgrades } from './upgrade'
import {
  PROTOCOL,
  type AttachableServer,
  type Bus,
  type BusEvent,
  type ConnectionSelector,
  type Published,
  type RealtimeOptions,
  type RealtimeStats,
  type RefusalReason,
  type User,
} from './types'

const log = debug('cms-realtime')

export interface Binding<Ctx = IncomingMessage> {
  /**
   * Route each upgrade for our path through the server's `request`
   * listeners (the app), so the app's middleware (sessions, auth, logging)
   * runs before the handshake, the way express-ws and koa-easy-ws do. The
   * app must then hand the request to `acceptUpgrade` (the adapters do).
   * Default false: the handshake completes directly, `authenticate(req)`.
   */
  upgradesThroughApp?: boolean
  /**
   * The request body the app's body parser already read (Koa:
   * `ctx.request.body`, Express: `req.body`), for our POST routes when the
   * stream itself is used up.
   */
  bodyOf?: (ctx: Ctx) => unknown
  /**
   * Does the app trust its proxy's `X-Forwarded-*` headers for this request
   * (Koa `app.proxy`, Express `trust proxy`)? Option `trustProxy` wins.
   */
  trustProxy?: (ctx: Ctx) => boolean
}

export class Realtime<Ctx = IncomingMessage> {
  readonly opts: ResolvedOptions<Ctx>
  private readonly viaApp: boolean
  private readonly bodyOf: ((ctx: Ctx) => unknown) | undefined
  private readonly trustOf: ((ctx: Ctx) => boolean) | undefined
  private readonly wss: WebSocketServer
  private readonly hub = new Hub()
  private readonly delivery = new Delivery((topic) => this.hub.subscribers(topic))
  /** Open WebSocket connections. */
  private readonly connections = new Set<Connection>()
  private readonly bus: Bus
  private readonly ownsBus: boolean
  private readonly servers = new Map<AttachableServer, (req: IncomingMessage, socket: Duplex, head: Buffer) => void>()
  private readonly upgrades: Upgrades<Ctx>
  private readonly sessions: Sessions
  private readonly collab: Collab
  private readonly counters: Counters = {
    eventsPublished: 0, eventsDelivered: 0, slowConsumersClosed: 0, drops: 0, protocolErrors: 0, strippedUpgrades: 0,
    refusals: {}, errors: 0, sessionsEnded: 0, subscriptionsRevoked: 0, recovered: 0, resynced: 0,
  }
  private readonly core: Core
  private readonly routeState: RouteState
  private heartbeat: NodeJS.Timeout | undefined
  /** What each nonce'd handshake looked like to us, and what browsers reported. */
  private readonly diagnostics = new Diagnostics()
  private readonly sse: SseStreams
  private readonly tickets: Tickets
  /** Each request's ticket, redeemed once: the refusal if it was bad. */
  private readonly exchanged = new WeakMap<IncomingMessage, Refusal | null>()
  private enabled: boolean
  private closed = false

  constructor(options: RealtimeOptions<Ctx> = {}, binding: Binding<Ctx> = {}) {
    this.opts = resolveOptions(options)
    this.viaApp = binding.upgradesThroughApp === true
    this.bodyOf = binding.bodyOf
    this.trustOf = binding.trustProxy
    this.enabled = this.opts.webSocketEnabled
    this.tickets = new Tickets(this.opts.ticketSecret, this.opts.ticketTtlMs)
    this.ownsBus = this.opts.bus === undefined
    this.bus = this.opts.bus ?? new MemoryBus()
    // Bus callbacks run on the bus's stack (a Redis reply): a throw must not escape.
    this.bus.onEvent((event) => {
      try {
        this.fanOut(event)
      } catch (err) {
        this.error('bus event', err)
      }
    })
    this.bus.onResync?.((topic) => {
      try {
        for (const sub of this.hub.subscribers(topic) ?? []) sub.resync(topic)
      } catch (err) {
        this.error('bus resync', err)
      }
    })
    this.sessions = new Sessions(this.opts as ResolvedOptions<never>, this.counters, (where, err) => this.error(where, err))
    this.collab = new Collab(
      this.bus.collabStore?.() ?? new MemoryCollabStore(),
      this.opts.collab,
      (user, topic) => this.sessions.allowed(user, topic),
      (where, err) => this.error(where, err),
      this.opts.maxTopicsPerConnection,
    )
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: this.opts.maxPayload,
      // checkUpgrade already refused offers that lack ours.
      handleProtocols: (offered) => (offered.has(PROTOCOL) ? PROTOCOL : false),
    })
    // `ws`'s own handshake checks answer in plain text; ours is the documented JSON, counted.
    this.wss.on('wsClientError', (err, socket) => {
      this.upgrades.refuse(socket, { status: 400, reason: 'bad_handshake', message: err.message })
    })
    const self = this
    this.upgrades = new Upgrades<Ctx>({
      path: this.opts.path,
      viaApp: this.viaApp,
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs,
      unclaimedUpgradeTimeoutMs: this.opts.unclaimedUpgradeTimeoutMs,
      diagnostics: this.diagnostics,
      gate: (req) => (this.closed ? closing() : checkUpgrade(req, this.enabled) ?? this.exchange(req)),
      admit: (req, socket, head, ctx) => this.admit(req, socket, head, ctx),
      arrived: (req) => { this.arrival(req) },
      settled: (req) => this.settle(req),
      pipelined: (socket) => {
        this.upgradeBehind.add(socket)
        return this.sse.owns(socket)
      },
      refused: (reason) => this.refused(reason),
      error: (where, err) => this.error(where, err),
    })
    this.core = {
      opts: this.opts as ResolvedOptions<never>,
      counters: this.counters,
      join: (conn, topic) => {
        if (this.hub.join(conn, topic)) void this.busCall(() => this.bus.subscribe(topic))
      },
      leave: (conn, topic) => {
        if (this.hub.leave(conn, topic)) void this.busCall(() => this.bus.unsubscribe(topic))
      },
      history: (topic, since) => this.bus.history(topic, since),
      latest: (topic) => this.bus.latest(topic),
      drained: () => this.delivery.drained(),
      hold: (socket, flushAt, bytes) => this.delivery.hold(socket, flushAt, bytes),
      gather: (socket, wire, flushAt) => this.delivery.gather(socket, wire, flushAt),
      flush: (socket) => this.delivery.flush(socket),
      closed: (conn) => { this.connections.delete(conn) },
      sessions: this.sessions,
      collab: this.collab,
    }
    this.routeState = {
      path: this.opts.path,
      heartbeatMs: this.opts.heartbeatMs,
      get webSocketEnabled() {
        return self.enabled
      },
      get fallback() {
        return self.fallbackOffered() ? 'sse' : 'none'
      },
      sawPlainGet: (req, client, seen) => this.diagnostics.stripped(req, client, seen),
      refuse: (reason) => this.refused(reason),
    }
    this.sse = new SseStreams(this.core, {
      heartbeatMs: this.opts.heartbeatMs,
      authenticate: async (ctx) => {
        const user = await this.identify(ctx as Ctx)
        return user === undefined ? { status: 401 } : { user }
      },
      refused: (reason) => this.refused(reason),
      // Node parses pipelined requests at once: one may already wait behind this stream.
      // A request waits behind this one, or an upgrade (which counts its own refusal).
      behind: (req) => {
        if (this.upgradeBehind.has(req.socket)) return 'upgrade'
        const n = this.newest.get(req.socket)
        return n !== undefined && n !== req ? 'request' : null
      },
      admission: (req) => this.arrival(req),
      settle: (req) => this.settle(req),
      closing: () => this.closed,
    })
    if (options.server !== undefined) this.attach(options.server)
  }

  /** Whether upgrades are accepted. Setting `false` closes open sockets with 4000 and refuses new ones. */
  get webSocketEnabled(): boolean {
    return this.enabled
  }

  set webSocketEnabled(value: boolean) {
    if (typeof value !== 'boolean') throw new TypeError('cms-realtime: webSocketEnabled must be a boolean')
    if (value === this.enabled) return
    this.enabled = value
    log('WebSocket channel %s', value ? 'enabled' : 'disabled')
    if (value) return
    for (const conn of this.connections) conn.close(CloseCode.DISABLED, 'disabled by server')
    // Fallback streams end too unless they outlive the switch; their clients
    // re-read config and settle in manual-refresh.
    if (!this.opts.fallbackWhenDisabled) this.sse.closeAll()
  }

  /** Listen to `server`'s `upgrade` event (idempotent). Upgrades for other paths are left to their own listeners. */
  attach(server: AttachableServer): this {
    if (this.closed) throw new Error('cms-realtime: attach() after close()')
    if (this.servers.has(server)) return this
    const listener = this.upgrades.listener(server)
    this.servers.set(server, listener)
    server.on('upgrade', listener)
    // First in line for every request: one sent on a connection that carries
    // an SSE stream is refused before the app sees it (it would hang forever).
    server.prependListener('request', this.onRequest)
    if (this.heartbeat === undefined) {
      this.heartbeat = setInterval(() => {
        try {
          this.beat()
        } catch (err) {
          this.error('heartbeat', err)
        }
      }, this.opts.heartbeatMs)
      this.heartbeat.unref()
    }
    return this
  }

  /**
   * Attach to the server a request arrived on, if not yet attached: the
   * browser fetches config before it connects, so the first request is early
   * enough. For Koa, whose `app.listen()` creates the server after `app.use()`.
   */
  attachFrom(req: IncomingMessage): void {
    const server = (req.socket as { server?: AttachableServer }).server
    if (server !== undefined && !this.closed && !this.servers.has(server)) this.attach(server)
  }

  /**
   * Publish an event to every subscriber of `topic`, on every node. `data`
   * is serialised once, here; it must be JSON-serialisable.
   */
  publish(topic: string, type: string, data: unknown = null): Promise<Published> {
    if (!validTopic(topic, this.opts.maxTopicLength)) {
      throw new TypeError(`cms-realtime: invalid topic ${JSON.stringify(topic)}`)
    }
    if (typeof type !== 'string' || type.length === 0) throw new TypeError('cms-realtime: event type must be a non-empty string')
    const json = JSON.stringify(data) as string | undefined
    if (json === undefined) throw new TypeError('cms-realtime: event data must be JSON-serialisable')
    const event = this.bus.publish(topic, type, json)
    // A synchronous bus (the memory bus) costs no callback or microtask per event.
    if ('then' in event) {
      return Promise.resolve(event).then(({ id }) => {
        this.counters.eventsPublished++ // a rejected publish is not counted
        return { topic, id, type }
      })
    }
    this.counters.eventsPublished++
    return Promise.resolve({ topic, id: event.id, type })
  }

  /** Is `req` an upgrade waiting for the app's middleware to pass it on (`upgradesThroughApp`)? */
  isPendingUpgrade(req: IncomingMessage): boolean {
    return this.upgrades.isPending(req)
  }

  /**
   * Finish an upgrade that went through the app: authenticate with the
   * app's context and complete (or refuse) the handshake.
   */
  acceptUpgrade(req: IncomingMessage, ctx: Ctx): Promise<void> {
    return this.upgrades.accept(req, ctx)
  }

  /**
   * End every connection and fallback stream of the selected users now
   * (logout, a blocked account): WebSocket close 4401, SSE `closed` frame.
   * Nothing is sent to them after this call. It does not end the CMS
   * session itself: invalidate that first, or the client may sign in again.
   * Returns how many connections and streams were ended.
   */
  disconnect(selector: ConnectionSelector, reason = 'signed out'): number {
    return this.sessions.disconnect(selector, reason)
  }

  /**
   * Ask `authorize` again for every topic the selected connections and
   * streams hold (default: all), and drop the ones now refused, each with
   * `{"op":"unsubscribed","topic":…,"reason":"forbidden"}`. Call it when
   * access changes (a user removed from a project: `{ topic: 'project:42' }`).
   * Resolves, once every answer is in, to how many subscriptions were dropped.
   */
  reauthorize(selector?: ConnectionSelector): Promise<number> {
    return this.sessions.reauthorize(selector)
  }

  /** Who is present on `topic` now, on every node (one entry per tab). */
  presence(topic: string): Promise<PresenceMember[]> {
    return this.collab.members(topic)
  }

  /** Soft locks: who holds `key`, and releasing it whoever holds it (its holder is told at once). */
  readonly locks = {
    holder: (key: string): Promise<LockHolder | null> => this.collab.holder(key),
    release: (key: string): Promise<boolean> => this.collab.forceRelease(key),
  }

  /** The reply for a plain HTTP request to our routes, or `undefined` when the path is not ours. */
  route(req: IncomingMessage, url: string | undefined = req.url, trusted = this.opts.trustProxy ?? false): Reply | undefined {
    const pathname = pathnameOf(url)
    return isOurs(pathname, this.opts.path) ? route(req, pathname, this.routeState, clientAddress(req, trusted)) : undefined
  }

  /**
   * The one entry point for adapters: finish a pending upgrade, or answer a
   * request to our routes on the raw `res`. Resolves `false` when the request
   * is not ours (call the next middleware). `url` is the request's original
   * URL (before any mount prefix was stripped); `ctx` is what `authenticate` gets.
   */
  async serve(req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: string | undefined = req.url): Promise<boolean> {
    this.attachFrom(req)
    if (this.upgrades.isPending(req)) {
      await this.upgrades.accept(req, ctx)
      return true
    }
    // An upgrade the app passed on too late: it was answered (503 timeout)
    // already, and is no stripped upgrade to diagnose.
    if (this.upgrades.wasRouted(req)) return true
    if (!isOurs(pathnameOf(url), this.opts.path)) return false
    // A reason phrase an earlier middleware left (Koa sets one with every
    // `ctx.status`) would otherwise go out with our status: `200 Unauthorized`.
    res.statusMessage = ''
    const trusted = this.trusted(ctx)
    // DNS rebinding: a page on another name is same-origin with itself.
    const host = checkHost(req, this.opts.hostAllowed, trusted)
    if (host !== null) {
      this.refused(host.reason)
      sendJson(res, host.status, { error: host.reason, reason: host.message })
      return true
    }
    // Our routes carry our CORS headers only: never an app middleware's.
    const origin = checkOrigin(req, this.opts.originAllowed, this.opts.requireOrigin, trusted)
    if (!origin.ok && origin.threw !== undefined) this.error('allowedOrigins', origin.threw)
    ownCors(res, origin.ok ? origin.cors : undefined)
    if (await this.serveFallback(req, res, ctx, url, origin.ok ? null : origin.refusal, trusted)) return true
    const reply = this.route(req, url, trusted)
    if (reply === undefined) return false
    res.writeHead(reply.status, reply.headers).end(reply.body) // Node omits the body for HEAD
    return true
  }

  /** For plain `node:http`: `if (!rt.handleRequest(req, res)) yourApp(req, res)`. */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    if (!this.upgrades.isPending(req) && !isOurs(pathnameOf(req.url), this.opts.path)) return false
    this.serve(req, res, req as Ctx).catch((err: unknown) => {
      // No framework here to turn a failure into a response: do it, never reject.
      this.error('request', err)
      if (!res.headersSent) sendJson(res, 500, { error: 'internal_error', reason: 'cms-realtime failed to answer' })
      else res.destroy()
    })
    return true
  }

  stats(): RealtimeStats {
    const c = this.counters
    return {
      connections: this.connections.size,
      subscriptions: this.hub.subscriptions,
      topics: this.hub.topicCount,
      eventsPublished: c.eventsPublished,
      eventsDelivered: c.eventsDelivered,
      slowConsumersClosed: c.slowConsumersClosed,
      drops: c.drops,
      protocolErrors: c.protocolErrors,
      refusals: { ...c.refusals },
      strippedUpgrades: c.strippedUpgrades,
      webSocketEnabled: this.enabled,
      fallbackStreams: this.sse.streams.size,
      diagnoses: { ...this.diagnostics.reports },
      diagnosesUnconfirmed: { ...this.diagnostics.unconfirmed },
      diagnosesRejected: this.diagnostics.rejected,
      errors: c.errors,
      sessionsEnded: c.sessionsEnded,
      subscriptionsRevoked: c.subscriptionsRevoked,
      recovery: { recovered: c.recovered, resynced: c.resynced },
      ...(this.bus.stats === undefined ? {} : { bus: this.bus.stats() }),
    }
  }

  /**
   * Stop: send 1001 (going away) to every client so it reconnects, maybe to
   * another node; stop listening; close the bus if it is ours. Resolves
   * when every socket is closed (stragglers are terminated after `timeoutMs`).
   */
  async close(timeoutMs = 2000): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.heartbeat)
    this.sessions.close()
    for (const [server, listener] of this.servers) {
      server.off('upgrade', listener)
      server.off('request', this.onRequest)
    }
    this.servers.clear()
    this.sse.closeAll()
    const closing = [...this.connections].map(
      (conn) => new Promise<void>((resolve) => {
        if (conn.ws.readyState === 3 /* CLOSED */) return resolve()
        conn.ws.once('close', () => resolve())
        conn.close(CloseCode.GOING_AWAY, 'server shutting down')
      }),
    )
    const timer = setTimeout(() => { for (const conn of this.connections) conn.ws.terminate() }, timeoutMs)
    await Promise.all(closing)
    clearTimeout(timer)
    await this.collab.close().catch((err: unknown) => this.error('collab close', err))
    if (this.ownsBus) await this.bus.close()
  }

  // ---- internals ----

  /** The newest request seen on each connection: an SSE stream must be the last (see SseStreams.pipelined). */
  private readonly newest = new WeakMap<object, IncomingMessage>()
  /** Connections with an upgrade pipelined behind a response: no stream may open on them. */
  private readonly upgradeBehind = new WeakSet<object>()

  private readonly onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    try {
      this.newest.set(req.socket, req)
      if (this.sse.pipelined(req)) this.refused('pipelined_request')
      else if (pathnameOf(req.url) === `${this.opts.path}/events`) {
        // Before the app's middleware, so its own auth sees the bearer token,
        // and a logout while it looks the session up reaches this stream.
        this.exchange(req)
        this.arrival(req)
        res.once('close', () => this.settle(req))
      }
    } catch (err) {
      this.error('request', err)
    }
  }

  /**
   * The handshake is sound and the app passed it on: the origin (with the
   * app's proxy trust, known only now), the user, the per-user cap; then 101.
   */
  private async admit(req: IncomingMessage, socket: Duplex, head: Buffer, ctx: Ctx): Promise<void> {
    const trusted = this.trusted(ctx)
    const host = checkHost(req, this.opts.hostAllowed, trusted)
    if (host !== null) return this.upgrades.refuse(socket, host)
    const origin = checkOrigin(req, this.opts.originAllowed, this.opts.requireOrigin, trusted)
    if (!origin.ok) {
      if (origin.threw !== undefined) this.error('allowedOrigins', origin.threw)
      return this.upgrades.refuse(socket, origin.refusal)
    }
    // Begun when the handshake arrived: a logout since is replayed on this connection when it is added.
    const admission = this.arrival(req)
    try {
      await this.admitAs(req, socket, head, ctx, admission)
    } finally {
      this.settle(req)
    }
  }

  /** Admissions by request, begun when it arrives, before the app's middleware looks the session up. */
  private readonly arrivals = new WeakMap<IncomingMessage, Admission>()

  private arrival(req: IncomingMessage): Admission {
    let a = this.arrivals.get(req)
    if (a === undefined) this.arrivals.set(req, (a = this.sessions.begin()))
    return a
  }

  private settle(req: IncomingMessage): void {
    const a = this.arrivals.get(req)
    if (a === undefined) return
    this.arrivals.delete(req)
    this.sessions.abandon(a)
  }

  private async admitAs(req: IncomingMessage, socket: Duplex, head: Buffer, ctx: Ctx, admission: Admission): Promise<void> {
    const user = await this.identify(ctx)
    if (user === undefined) {
      return this.upgrades.refuse(socket, { status: 401, reason: 'unauthenticated', message: 'authentication required' })
    }
    // The flag may have flipped, or the socket died, while we awaited.
    if (this.closed) return this.upgrades.refuse(socket, closing())
    if (!this.enabled) return this.upgrades.refuse(socket, checkUpgrade(req, false)!)
    if (socket.destroyed) return
    const full = this.sessions.full(user)
    if (full !== null) return this.upgrades.refuse(socket, full)
    const first = handshakeTopics(req.url, this.opts.maxTopicsPerConnection, this.opts.maxTopicLength)
    if (typeof first === 'string') return this.upgrades.refuse(socket, { status: 400, reason: 'bad_handshake', message: first })
    if (first !== null) {
      // The 101 and the answers to the handshake's subscriptions (ready
      // within this turn on the memory bus) leave in one write: a syscall
      // less per (re)connection, which is what a reconnect storm is made of.
      socket.cork()
      setImmediate(uncork, socket)
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, socket, user, first, admission))
  }

  private onConnection(ws: WebSocket, socket: Duplex, user: User, first: FirstTopics | null, admission: Admission): void {
    socket.off('error', onSocketError)
    this.diagnostics.accepted(socket)
    const conn = new Connection(ws, socket, user, this.core)
    this.connections.add(conn)
    // Shared listeners, the connection found through the socket: no
    // closures per connection (an idle one should cost little beyond `ws`).
    ;(ws as Tagged)[CONN] = conn
    ws.on('close', onWsClose) // emitted once; `once` would add a wrapper per socket
    ws.on('error', onWsError)
    // Signed out while being admitted: closed with 4401 at once, nothing subscribed.
    if (!this.sessions.add(conn, admission)) return
    ws.on('message', onWsMessage)
    ws.on('pong', onWsPong)
    // Topics named in the handshake: subscribed now, no round trip.
    if (first !== null) conn.subscribeAll(first.topics, first.since)
  }

  /**
   * `authenticate`, for the handshake and every fallback request alike:
   * the user, or `undefined` to refuse (nothing returned, a throw, or a
   * session whose `expiresAt` has passed).
   */
  private async identify(ctx: Ctx): Promise<User | undefined> {
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
  private exchange(req: IncomingMessage): Refusal | null {
    const done = this.exchanged.get(req)
    if (done !== undefined) return done
    const ticket = ticketOf(req.url)
    let refusal: Refusal | null = null
    if (ticket !== undefined) {
      const r = this.tickets.redeem(ticket)
      if (r.ok) req.headers.authorization = r.authorization
      else refusal = { status: 401, reason: 'unauthenticated', message: `${r.why}: get a new one from POST ${this.opts.path}/ticket` }
    }
    this.exchanged.set(req, refusal)
    return refusal
  }

  /**
   * `POST <path>/ticket`: seal the request's `Authorization` into a ticket,
   * once `authenticate` accepts it (a bad token is a 401 now, not at the
   * socket). `OPTIONS` answers an allowed cross-origin preflight.
   */
  private async serveTicket(req: IncomingMessage, res: ServerResponse, ctx: Ctx, originRefusal: Refusal | null): Promise<void> {
    if (originRefusal !== null) {
      this.refused('origin')
      return sendJson(res, 403, { error: 'origin', reason: originRefusal.message })
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'Access-Control-Allow-Methods': 'POST', 'Access-Control-Allow-Headers': 'Authorization', 'Access-Control-Max-Age': '600',
      }).end()
      return
    }
    if (req.method !== 'POST') {
      this.refused('bad_method')
      return sendJson(res, 405, { error: 'method_not_allowed', reason: 'use POST' }, { Allow: 'POST, OPTIONS' })
    }
    const authorization = req.headers.authorization
    if (authorization === undefined || authorization.trim() === '') {
      return sendJson(res, 400, { error: 'no_credentials', reason: 'send the token to seal as Authorization: Bearer <token>' })
    }
    if (this.closed) return sendJson(res, 503, { error: 'shutting_down', reason: closing().message })
    if ((await this.identify(ctx)) === undefined) {
      this.refused('unauthenticated')
      return sendJson(res, 401, { error: 'unauthenticated', reason: 'authentication required' })
    }
    sendJson(res, 200, { ticket: this.tickets.mint(authorization), expiresInMs: this.tickets.ttlMs })
  }

  private trusted(ctx: Ctx): boolean {
    if (this.opts.trustProxy !== undefined) return this.opts.trustProxy
    try {
      return this.trustOf?.(ctx) === true
    } catch (err) {
      this.error('trustProxy', err)
      return false
    }
  }

  /** Log and count an exception we caught so that it could not end the process. */
  private error(where: string, err: unknown): void {
    this.counters.errors++
    log('%s threw: %O', where, err)
  }

  private refused(reason: RefusalReason): void {
    this.counters.refusals[reason] = (this.counters.refusals[reason] ?? 0) + 1
    if (reason === 'stripped_upgrade') this.counters.strippedUpgrades++
  }

  private fanOut(event: BusEvent): void {
    // Paced: a burst must not block the event loop (see delivery.ts).
    if (this.hub.subscribers(event.topic) !== undefined) this.delivery.push(event)
  }

  /** Heartbeat: one timer for all sockets; a peer that missed the last ping is terminated. */
  private beat(): void {
    for (const conn of this.connections) {
      if (!conn.alive) {
        log('terminating a peer that missed a heartbeat')
        conn.ws.terminate()
        continue
      }
      conn.alive = false
      conn.ws.ping()
    }
  }

  /**
   * The fallback and diagnostics routes, which need the adapter's `ctx` or
   * stream their answer. `false` when `url` is none of them.
   */
  private async serveFallback(
    req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: string | undefined, originRefusal: Refusal | null, trusted: boolean,
  ): Promise<boolean> {
    const pathname = pathnameOf(url)
    const forbidden = (): true => {
      this.refused('origin')
      sendJson(res, 403, { error: 'origin', reason: originRefusal!.message })
      return true
    }
    if (pathname === `${this.opts.path}/events` && this.opts.fallback === 'sse' && !this.closed) {
      // The same door as the upgrade: a cross-site page must not read the stream.
      if (originRefusal !== null) return forbidden()
      if (!this.fallbackOffered()) {
        sendJson(res, 503, { error: 'disabled', reason: 'no fallback transport is offered now; see GET <path>/config' })
        return true
      }
      const badTicket = this.exchange(req)
      if (badTicket !== null) {
        this.refused(badTicket.reason)
        sendJson(res, badTicket.status, { error: badTicket.reason, reason: badTicket.message })
        return true
      }
      await this.sse.handle(req, res, ctx, url ?? '/')
      return true
    }
    if (pathname === `${this.opts.path}/diagnostics`) {
      if (originRefusal !== null && req.method === 'POST') return forbidden()
      await this.diagnostics.handle(req, res, url ?? '/', () => this.bodyOf?.(ctx), clientAddress(req, trusted))
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

  /** Is the SSE fallback on offer right now? Not when the channel is off, unless `fallbackWhenDisabled`. */
  private fallbackOffered(): boolean {
    return this.opts.fallback === 'sse' && (this.enabled || this.opts.fallbackWhenDisabled)
  }

  private async busCall(fn: () => unknown): Promise<void> {
    try {
      await fn()
    } catch (err) {
      this.error('bus', err)
    }
  }
}

const CONN = Symbol('cms-realtime.connection')
type Tagged = WebSocket & { [CONN]: Connection }

function uncork(socket: Duplex): void {
  socket.uncork()
}

function onWsMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  ;(this as Tagged)[CONN].onMessage(data, isBinary)
}

function onWsPong(this: WebSocket): void {
  ;(this as Tagged)[CONN].alive = true
}

/** `ws` closes the socket itself after an error (1009 for maxPayload, 1002 for bad frames); we only log, so one client can never crash the process. */
function onWsError(err: Error): void {
  log('socket error: %s', err.message)
}

function onWsClose(this: WebSocket): void {
  ;(this as Tagged)[CONN].cleanup()
}

interface FirstTopics {
  topics: string[]
  since: Array<string | undefined>
}

/**
 * `?topics=a,b&since=V` on the upgrade URL (the SSE fallback's encoding): the
 * connection starts subscribed to them, each authorised exactly as a
 * `subscribe` frame, so a (re)connect needs no extra round trip. `null`
 * when absent; a message when malformed (the handshake gets 400).
 */
function handshakeTopics(url: string | undefined, maxTopics: number, maxLength: number): FirstTopics | null | string {
  const q = url?.indexOf('?') ?? -1
  if (q < 0) return null
  const params = new URLSearchParams(url!.slice(q + 1))
  const list = params.get('topics')
  if (list === null || list === '') return null
  const topics = list.split(',')
  if (topics.length > maxTopics) return `at most ${maxTopics} topics in the handshake`
  const bad = topics.find((t): boolean => !validTopic(t, maxLength))
  if (bad !== undefined) return `invalid topic ${JSON.stringify(bad.slice(0, maxLength))} in ?topics=`
  if (new Set(topics).size !== topics.length) return 'a topic is listed twice in ?topics='
  const vector = params.get('since')
  const since = vector === null || vector === '' ? topics.map(() => undefined) : decodeCursors(vector, topics.length)
  if (since === null) return '?since= must hold one percent-encoded cursor per topic, joined by ","'
  return { topics, since }
}

function closing(): Refusal {
  return { status: 503, reason: 'shutting_down', message: 'the server is shutting down' }
}

/** Create the framework-free core. See `RealtimeOptions` for every option. */
export function createRealtime<Ctx = IncomingMessage, U = User>(options?: RealtimeOptions<Ctx, U>, binding?: Binding<Ctx>): Realtime<Ctx> {
  // The core handles users as opaque values; `U` types the app's callbacks only.
  return new Realtime(options as RealtimeOptions<Ctx>, binding)
}
