/**
 * The framework-free core: owns the `ws` server (noServer), the hub, the bus
 * and the HTTP routes. The Koa and Express adapters are thin wrappers over
 * this object's public methods.
 */
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import debug from 'debug'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import { MemoryBus } from './bus/memory'
import { Connection, type Core, type Counters } from './connection'
import { Delivery } from './delivery'
import { checkUpgrade, writeRefusal, type Refusal } from './handshake'
import { Hub } from './hub'
import { Diagnostics } from './diagnostics'
import { SseStreams } from './sse'
import { serveClient } from './client-asset'
import { isOurs, pathnameOf, route, sendJson, type Reply, type RouteState } from './http-routes'
import { resolveOptions, type ResolvedOptions } from './options'
import { CloseCode, validTopic } from './protocol'
import {
  PROTOCOL,
  type AttachableServer,
  type Bus,
  type BusEvent,
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
}

interface PendingUpgrade {
  socket: Duplex
  head: Buffer
  res: ServerResponse
  timer: NodeJS.Timeout
}

export class Realtime<Ctx = IncomingMessage> {
  readonly opts: ResolvedOptions<Ctx>
  private readonly viaApp: boolean
  private readonly bodyOf: ((ctx: Ctx) => unknown) | undefined
  private readonly wss: WebSocketServer
  private readonly hub = new Hub()
  private readonly delivery = new Delivery((topic) => this.hub.subscribers(topic))
  /** Open WebSocket connections. */
  private readonly connections = new Set<Connection>()
  private readonly bus: Bus
  private readonly ownsBus: boolean
  private readonly servers = new Map<AttachableServer, (req: IncomingMessage, socket: Duplex, head: Buffer) => void>()
  private readonly pending = new WeakMap<IncomingMessage, PendingUpgrade>()
  private readonly counters: Counters = {
    eventsPublished: 0, eventsDelivered: 0, slowConsumersClosed: 0, drops: 0, protocolErrors: 0, strippedUpgrades: 0,
    refusals: {},
  }
  private readonly core: Core
  private readonly routeState: RouteState
  private heartbeat: NodeJS.Timeout | undefined
  /** What each nonce'd handshake looked like to us, and what browsers reported. */
  private readonly diagnostics = new Diagnostics()
  private readonly sse: SseStreams
  private enabled: boolean
  private closed = false

  constructor(options: RealtimeOptions<Ctx> = {}, binding: Binding<Ctx> = {}) {
    this.opts = resolveOptions(options)
    this.viaApp = binding.upgradesThroughApp === true
    this.bodyOf = binding.bodyOf
    this.enabled = this.opts.webSocketEnabled
    this.ownsBus = this.opts.bus === undefined
    this.bus = this.opts.bus ?? new MemoryBus()
    this.bus.onEvent((event) => this.fanOut(event))
    this.bus.onResync?.((topic) => {
      for (const sub of this.hub.subscribers(topic) ?? []) sub.resync(topic)
    })
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: this.opts.maxPayload,
      // checkUpgrade already refused offers that lack ours.
      handleProtocols: (offered) => (offered.has(PROTOCOL) ? PROTOCOL : false),
    })
    const self = this
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
      closed: (conn) => { this.connections.delete(conn) },
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
      sawPlainGet: (req) => this.diagnostics.stripped(req),
      refuse: (reason) => this.refused(reason),
    }
    this.sse = new SseStreams(this.core, {
      heartbeatMs: this.opts.heartbeatMs,
      authenticate: (ctx) => this.authenticateFallback(ctx as Ctx),
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
    const listener = (req: IncomingMessage, socket: Duplex, head: Buffer): void => this.onUpgrade(server, req, socket, head)
    this.servers.set(server, listener)
    server.on('upgrade', listener)
    if (this.heartbeat === undefined) {
      this.heartbeat = setInterval(() => this.beat(), this.opts.heartbeatMs)
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
    this.counters.eventsPublished++
    const event = this.bus.publish(topic, type, json)
    // A synchronous bus (the memory bus) costs no callback or microtask per event.
    if ('then' in event) return Promise.resolve(event).then(({ id }) => ({ topic, id, type }))
    return Promise.resolve({ topic, id: event.id, type })
  }

  /** Is `req` an upgrade waiting for the app's middleware to pass it on (`upgradesThroughApp`)? */
  isPendingUpgrade(req: IncomingMessage): boolean {
    return this.pending.has(req)
  }

  /**
   * Finish an upgrade that went through the app: authenticate with the
   * app's context and complete (or refuse) the handshake.
   */
  async acceptUpgrade(req: IncomingMessage, ctx: Ctx): Promise<void> {
    const p = this.pending.get(req)
    if (p === undefined) return
    this.pending.delete(req)
    clearTimeout(p.timer)
    p.res.detachSocket(p.socket as never)
    await this.complete(req, p.socket, p.head, ctx)
  }

  /** The reply for a plain HTTP request to our routes, or `undefined` when the path is not ours. */
  route(req: IncomingMessage, url: string | undefined = req.url): Reply | undefined {
    const pathname = pathnameOf(url)
    return isOurs(pathname, this.opts.path) ? route(req, pathname, this.routeState) : undefined
  }

  /**
   * The one entry point for adapters: finish a pending upgrade, or answer a
   * request to our routes on the raw `res`. Resolves `false` when the request
   * is not ours (call the next middleware). `url` is the request's original
   * URL (before any mount prefix was stripped); `ctx` is what `authenticate` gets.
   */
  async serve(req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: string | undefined = req.url): Promise<boolean> {
    this.attachFrom(req)
    if (this.pending.has(req)) {
      await this.acceptUpgrade(req, ctx)
      return true
    }
    if (await this.serveFallback(req, res, ctx, url)) return true
    const reply = this.route(req, url)
    if (reply === undefined) return false
    res.writeHead(reply.status, reply.headers).end(reply.body) // Node omits the body for HEAD
    return true
  }

  /** For plain `node:http`: `if (!rt.handleRequest(req, res)) yourApp(req, res)`. */
  handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
    if (!this.pending.has(req) && !isOurs(pathnameOf(req.url), this.opts.path)) return false
    void this.serve(req, res, req as Ctx)
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
      diagnosesRejected: this.diagnostics.rejected,
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
    for (const [server, listener] of this.servers) server.off('upgrade', listener)
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
    if (this.ownsBus) await this.bus.close()
  }

  // ---- internals ----

  private onUpgrade(server: AttachableServer, req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (pathnameOf(req.url) !== this.opts.path) {
      this.foreignUpgrade(server, socket)
      return
    }
    // Until `ws` owns the socket, a reset must not become an uncaught error.
    socket.on('error', onSocketError)
    this.diagnostics.watch(req, socket)
    const refusal = this.closed ? closing() : (checkUpgrade(req, this.enabled) ?? this.checkOrigin(req))
    if (refusal !== null) return this.refuse(socket, refusal)
    if (!this.viaApp || server.listenerCount('request') === 0) {
      void this.complete(req, socket, head, req as Ctx)
      return
    }
    // Let the app's middleware see the request. If it answers by itself (its
    // auth says 401, its router 404), that answer goes to the socket whole.
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket as never)
    res.on('finish', () => {
      if (this.pending.get(req)?.res === res) {
        this.pending.delete(req)
        clearTimeout(timer)
        this.refused('app_response')
        log('upgrade for %s answered by the app with %d%s', req.url, res.statusCode, res.statusCode === 404 ? NOT_PASSED_ON : '')
      }
      const s = socket as Duplex & { destroySoon?: () => void }
      if (s.destroySoon) s.destroySoon()
      else s.end()
    })
    const timer = setTimeout(() => {
      if (this.pending.get(req)?.res !== res) return
      this.pending.delete(req)
      res.detachSocket(socket as never)
      this.refuse(socket, {
        status: 503, reason: 'timeout', message: 'the app did not pass the upgrade on to cms-realtime in time: is the middleware mounted?',
      })
    }, this.opts.handshakeTimeoutMs)
    timer.unref()
    this.pending.set(req, { socket, head, res, timer })
    server.emit('request', req, res)
  }

  private async complete(req: IncomingMessage, socket: Duplex, head: Buffer, ctx: Ctx): Promise<void> {
    let user: User = null
    if (this.opts.authenticate !== undefined) {
      try {
        user = await this.opts.authenticate(ctx)
      } catch (err) {
        log('authenticate threw: %O', err)
        user = null
      }
      if (user === null || user === undefined || user === false) {
        return this.refuse(socket, { status: 401, reason: 'unauthenticated', message: 'authentication required' })
      }
    }
    // The flag may have flipped, or the socket died, while we awaited.
    if (this.closed) return this.refuse(socket, closing())
    if (!this.enabled) return this.refuse(socket, checkUpgrade(req, false)!)
    if (socket.destroyed) return
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, socket, user))
  }

  private onConnection(ws: WebSocket, socket: Duplex, user: User): void {
    socket.off('error', onSocketError)
    this.diagnostics.accepted(socket)
    const conn = new Connection(ws, socket, user, this.core)
    this.connections.add(conn)
    // Shared listeners, the connection found through the socket: no
    // closures per connection (an idle one should cost little beyond `ws`).
    ;(ws as Tagged)[CONN] = conn
    ws.on('message', onWsMessage)
    ws.on('pong', onWsPong)
    ws.on('error', onWsError)
    ws.on('close', onWsClose) // emitted once; `once` would add a wrapper per socket
  }

  private checkOrigin(req: IncomingMessage): Refusal | null {
    const origin = req.headers.origin
    if (origin === undefined) {
      return this.opts.requireOrigin ? { status: 403, reason: 'origin', message: 'an Origin header is required' } : null
    }
    return this.opts.originAllowed(origin, req)
      ? null
      : { status: 403, reason: 'origin', message: `origin ${origin} is not allowed` }
  }

  /**
   * An upgrade for a path that is not ours: leave it to the other listeners.
   * If there are none, answer 404 at once; otherwise answer 404 only if
   * nobody has written to the socket after `unclaimedUpgradeTimeoutMs`.
   */
  private foreignUpgrade(server: AttachableServer, socket: Duplex): void {
    if (server.listenerCount('upgrade') <= 1) {
      socket.on('error', onSocketError)
      this.refuse(socket, { status: 404, reason: 'not_found', message: 'no WebSocket endpoint at this path' })
      return
    }
    const net = socket as Duplex & { bytesWritten?: number }
    const timer = setTimeout(() => {
      if (!socket.destroyed && (net.bytesWritten ?? 0) === 0) {
        this.refuse(socket, { status: 404, reason: 'not_found', message: 'no WebSocket endpoint at this path' })
      }
    }, this.opts.unclaimedUpgradeTimeoutMs)
    timer.unref()
    socket.once('close', () => clearTimeout(timer))
  }

  private refuse(socket: Duplex, refusal: Refusal): void {
    this.refused(refusal.reason)
    this.diagnostics.refused(socket, refusal)
    log('refused handshake: %d %s', refusal.status, refusal.reason)
    writeRefusal(socket, refusal)
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
  private async serveFallback(req: IncomingMessage, res: ServerResponse, ctx: Ctx, url: string | undefined): Promise<boolean> {
    const pathname = pathnameOf(url)
    if (pathname === `${this.opts.path}/events` && this.opts.fallback === 'sse' && !this.closed) {
      if (!this.fallbackOffered()) {
        sendJson(res, 503, { error: 'disabled', reason: 'no fallback transport is offered now; see GET <path>/config' })
        return true
      }
      await this.sse.handle(req, res, ctx, url ?? '/')
      return true
    }
    if (pathname === `${this.opts.path}/diagnostics`) {
      await this.diagnostics.handle(req, res, url ?? '/', () => this.bodyOf?.(ctx))
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

  /** `authenticate` for a fallback request: the same rule as the handshake's. */
  private async authenticateFallback(ctx: Ctx): Promise<{ user: User } | { status: 401 }> {
    if (this.opts.authenticate === undefined) return { user: null }
    let user: User = null
    try {
      user = await this.opts.authenticate(ctx)
    } catch (err) {
      log('authenticate threw: %O', err)
    }
    return user === null || user === undefined || user === false ? { status: 401 } : { user }
  }

  private async busCall(fn: () => unknown): Promise<void> {
    try {
      await fn()
    } catch (err) {
      log('bus error: %O', err)
    }
  }
}

/** A 404 from the app for our own path means the middleware is not where `path` points. */
const NOT_PASSED_ON =
  ': the app never passed it to the cms-realtime middleware. Is it mounted where option "path" points ' +
  '(mount prefix included)? Routers such as @koa/router run use() middleware only for requests that match ' +
  'one of their routes: see docs/mounting.md'

const CONN = Symbol('cms-realtime.connection')
type Tagged = WebSocket & { [CONN]: Connection }

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

function onSocketError(this: Duplex): void {
  this.destroy()
}

function closing(): Refusal {
  return { status: 503, reason: 'shutting_down', message: 'the server is shutting down' }
}

/** Create the framework-free core. See `RealtimeOptions` for every option. */
export function createRealtime<Ctx = IncomingMessage>(options?: RealtimeOptions<Ctx>, binding?: Binding<Ctx>): Realtime<Ctx> {
  return new Realtime(options, binding)
}
