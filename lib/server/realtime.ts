/**
 * The composition root: wires the bus, the hub and delivery, session life,
 * collaboration and the two doors (the `upgrade` door with the WebSocket
 * transport behind it, the HTTP door with the SSE transport), and offers
 * the public API the Koa and Express adapters wrap.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import debug from 'debug'
import { MemoryBus } from '../bus/memory'
import { Collab } from '../collab/collab'
import { MemoryCollabStore, type LockHolder, type PresenceMember } from '../collab/store'
import type { Counters } from '../counters'
import { Delivery } from '../delivery/delivery'
import { Hub } from '../delivery/hub'
import { resolveOptions, type ResolvedOptions } from '../options'
import { CloseCode, reserved, validTopic } from '../protocol/protocol'
import { Control, CONTROL_TOPIC } from '../sessions/control'
import { Sessions } from '../sessions/sessions'
import type { Core } from '../transports/transport'
import { WebSocketDoor } from '../transports/websocket-server'
import type {
  AttachableServer, Bus, ConnectionSelector, Published, RealtimeOptions, RealtimeStats, RefusalReason, User,
} from '../types'
import { Access, closing } from './access'
import { Diagnostics } from './diagnostics'
import { checkUpgrade } from './handshake'
import { isOurs, pathnameOf, sendJson, type Reply } from './http'
import { HttpDoor } from './requests'
import { statsOf } from './stats'
import { Upgrades } from './upgrade'
import type { Binding } from './binding'
export type { Binding } from './binding'

const log = debug('cms-realtime')

export class Realtime<Ctx = IncomingMessage> {
  readonly opts: ResolvedOptions<Ctx>
  private readonly hub = new Hub()
  private readonly delivery = new Delivery((topic) => this.hub.subscribers(topic))
  private readonly bus: Bus
  private readonly ownsBus: boolean
  private readonly servers = new Map<AttachableServer, (req: IncomingMessage, socket: Duplex, head: Buffer) => void>()
  private readonly counters: Counters = {
    eventsPublished: 0, eventsDelivered: 0, slowConsumersClosed: 0, drops: 0, protocolErrors: 0, strippedUpgrades: 0,
    refusals: {}, errors: 0, sessionsEnded: 0, subscriptionsRevoked: 0, recovered: 0, resynced: 0,
  }
  private readonly sessions: Sessions
  private readonly control: Control
  private readonly collab: Collab
  /** What each nonce'd handshake looked like to us, and what browsers reported. */
  private readonly diagnostics = new Diagnostics()
  private readonly upgrades: Upgrades<Ctx>
  private readonly ws: WebSocketDoor<Ctx>
  private readonly http: HttpDoor<Ctx>
  private heartbeat: NodeJS.Timeout | undefined
  private enabled: boolean
  private closed = false

  constructor(options: RealtimeOptions<Ctx> = {}, binding: Binding<Ctx> = {}) {
    this.opts = resolveOptions(options)
    this.enabled = this.opts.webSocketEnabled
    this.ownsBus = this.opts.bus === undefined
    this.bus = this.opts.bus ?? new MemoryBus()
    // Bus callbacks run on the bus's stack (a Redis reply): a throw must not escape.
    // Paced: a burst must not block the event loop (see delivery.ts).
    this.bus.onEvent((event) => this.guard('bus event', () => {
      if (this.hub.subscribers(event.topic) !== undefined) this.delivery.push(event)
      else if (event.topic === CONTROL_TOPIC) this.control.receive(event.data)
    }))
    this.bus.onResync?.((topic) => this.guard('bus resync', () => {
      for (const sub of this.hub.subscribers(topic) ?? []) sub.resync(topic)
      if (topic === CONTROL_TOPIC) this.control.missed()
    }))
    const error = (where: string, err: unknown): void => this.error(where, err)
    this.sessions = new Sessions(this.opts as ResolvedOptions<never>, this.counters, error)
    this.control = new Control(this.bus, this.sessions, !this.ownsBus, (fn) => this.busCall(fn), error)
    this.collab = new Collab(this.bus.collabStore?.() ?? new MemoryCollabStore(), this.opts.collab,
      (user, topic) => this.sessions.allowed(user, topic), error, this.opts.maxTopicsPerConnection)
    const core: Core = {
      opts: this.opts as ResolvedOptions<never>,
      counters: this.counters,
      join: (sub, topic) => { if (this.hub.join(sub, topic)) void this.busCall(() => this.bus.subscribe(topic)) },
      leave: (sub, topic) => { if (this.hub.leave(sub, topic)) void this.busCall(() => this.bus.unsubscribe(topic)) },
      history: (topic, since) => this.bus.history(topic, since),
      latest: (topic) => this.bus.latest(topic),
      drained: () => this.delivery.drained(),
      hold: (socket, flushAt, bytes) => this.delivery.hold(socket, flushAt, bytes),
      gather: (socket, wire, flushAt) => this.delivery.gather(socket, wire, flushAt),
      flush: (socket) => this.delivery.flush(socket),
      closed: (conn) => { this.ws.connections.delete(conn as never) },
      sessions: this.sessions,
      collab: this.collab,
    }
    const access = new Access<Ctx>(this.opts, this.sessions, binding.trustProxy, error)
    const self = this
    const state = {
      core, diagnostics: this.diagnostics, bodyOf: binding.bodyOf, error,
      get closed() { return self.closed },
      get enabled() { return self.enabled },
      refused: (reason: RefusalReason) => this.refused(reason),
      refuse: (socket: Duplex, refusal: Parameters<Upgrades<Ctx>['refuse']>[1]) => this.upgrades.refuse(socket, refusal),
    }
    this.ws = new WebSocketDoor<Ctx>(state, access)
    this.http = new HttpDoor<Ctx>(state, access)
    this.upgrades = new Upgrades<Ctx>({
      path: this.opts.path, viaApp: binding.upgradesThroughApp === true, diagnostics: this.diagnostics,
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs, unclaimedUpgradeTimeoutMs: this.opts.unclaimedUpgradeTimeoutMs,
      gate: (req) => (this.closed ? closing() : checkUpgrade(req, this.enabled) ?? access.exchange(req)),
      admit: (req, socket, head, ctx) => this.ws.admit(req, socket, head, ctx),
      arrived: (req) => { access.arrival(req) }, settled: (req) => access.settle(req),
      pipelined: (socket) => this.http.upgradePipelined(socket), refused: (reason) => this.refused(reason), error,
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
    for (const conn of this.ws.connections) conn.close(CloseCode.DISABLED, 'disabled by server')
    // Fallback streams end too unless they outlive the switch; their clients
    // re-read config and settle in manual-refresh.
    if (!this.opts.fallbackWhenDisabled) this.http.closeAll(false)
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
    server.prependListener('request', this.http.onRequest)
    if (this.heartbeat === undefined) {
      this.heartbeat = setInterval(() => this.guard('heartbeat', () => this.ws.beat()), this.opts.heartbeatMs)
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

  /** Publish an event to every subscriber of `topic`, on every node. `data` is serialised once, here. */
  publish(topic: string, type: string, data: unknown = null): Promise<Published> {
    if (!validTopic(topic, this.opts.maxTopicLength) || reserved(topic)) throw new TypeError(`cms-realtime: invalid topic ${JSON.stringify(topic)}`)
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

  /** Finish an upgrade that went through the app: authenticate with the app's context and complete (or refuse) it. */
  acceptUpgrade(req: IncomingMessage, ctx: Ctx): Promise<void> {
    return this.upgrades.accept(req, ctx)
  }

  /** End the selected users' connections and streams now (4401; invalidate the CMS session first). Returns how many. */
  disconnect(selector: ConnectionSelector, reason = 'signed out'): number {
    return this.control.disconnect(selector, reason)
  }

  /** Ask `authorize` again for what the selected connections hold (default: all); resolves to how many were dropped here. */
  reauthorize(selector?: ConnectionSelector): Promise<number> {
    return this.control.reauthorize(selector)
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
    return this.http.route(req, url, trusted)
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
    // An upgrade the app passed on too late was answered (503) already: no stripped upgrade to diagnose.
    if (this.upgrades.wasRouted(req)) return true
    if (!isOurs(pathnameOf(url), this.opts.path)) return false
    return this.http.serve(req, res, ctx, url)
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
    return statsOf(this.counters, this.hub, this.diagnostics, this.bus, {
      connections: this.ws.connections.size, streams: this.http.sse.streams.size, polls: this.http.polls.held, webSocketEnabled: this.enabled,
    })
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
      server.off('request', this.http.onRequest)
    }
    this.servers.clear()
    this.http.closeAll(true)
    await this.ws.closeAll(CloseCode.GOING_AWAY, 'server shutting down', timeoutMs)
    await this.collab.close().catch((err: unknown) => this.error('collab close', err))
    if (this.ownsBus) await this.bus.close()
  }

  /** Log and count an exception we caught so that it could not end the process. */
  private error(where: string, err: unknown): void {
    this.counters.errors++
    log('%s threw: %O', where, err)
  }

  /** Run `fn` from a timer or a bus callback: nothing may escape. */
  private guard(where: string, fn: () => void): void {
    try { fn() } catch (err) { this.error(where, err) }
  }

  private refused(reason: RefusalReason): void {
    this.counters.refusals[reason] = (this.counters.refusals[reason] ?? 0) + 1
    if (reason === 'stripped_upgrade') this.counters.strippedUpgrades++
  }

  /** A bus call, made now (a topic's first subscriber joins the bus before its history is read), whose failure is counted, never thrown. */
  private async busCall(fn: () => unknown): Promise<void> {
    try { await fn() } catch (err) { this.error('bus', err) }
  }
}

/** Create the framework-free core. See `RealtimeOptions` for every option. */
export function createRealtime<Ctx = IncomingMessage, U = User>(options?: RealtimeOptions<Ctx, U>, binding?: Binding<Ctx>): Realtime<Ctx> {
  // The core handles users as opaque values; `U` types the app's callbacks only.
  return new Realtime(options as RealtimeOptions<Ctx>, binding)
}
