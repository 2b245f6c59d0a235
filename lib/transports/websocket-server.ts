/**
 * The WebSocket transport's server side: a sound handshake that the app
 * passed on is checked (host, origin, user, caps) and completed by `ws`
 * (noServer), its connections are kept, pinged and closed. The handshake
 * rules themselves are in server/handshake.ts; the raw `upgrade` door is
 * server/upgrade.ts.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import debug from 'debug'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import { decodeCursors } from '../client/cursor-vector'
import { PROTOCOL } from '../client/wire'
import type { ResolvedOptions } from '../options'
import { validTopic } from '../protocol/protocol'
import type { Admission } from '../sessions/sessions'
import { closing, type Access } from '../server/access'
import type { Diagnostics } from '../server/diagnostics'
import { checkUpgrade, type Refusal } from '../server/handshake'
import { checkHost, checkOrigin } from '../server/origin'
import { onSocketError } from '../server/upgrade'
import type { User } from '../types'
import { Connection, type Core } from './websocket'

const log = debug('cms-realtime')

export interface WebSocketHost {
  readonly core: Core
  readonly diagnostics: Diagnostics
  /** Write a refusal to the raw socket (counted). */
  refuse(socket: Duplex, refusal: Refusal): void
  error(where: string, err: unknown): void
  /** Is the server closing, and are upgrades on? Read after every await. */
  readonly closed: boolean
  readonly enabled: boolean
}

export class WebSocketDoor<Ctx> {
  /** Open WebSocket connections. */
  readonly connections = new Set<Connection>()
  private readonly wss: WebSocketServer
  private readonly opts: ResolvedOptions<Ctx>

  constructor(private readonly host: WebSocketHost, private readonly access: Access<Ctx>) {
    this.opts = host.core.opts as ResolvedOptions<Ctx>
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
      host.refuse(socket, { status: 400, reason: 'bad_handshake', message: err.message })
    })
  }

  /**
   * The handshake is sound and the app passed it on: the host and origin
   * (with the app's proxy trust, known only now), the user, the caps; then 101.
   */
  async admit(req: IncomingMessage, socket: Duplex, head: Buffer, ctx: Ctx): Promise<void> {
    // Begun when the handshake arrived: a logout since is replayed on this
    // connection when it is added. Settled on every way out, refusals included.
    const admission = this.access.arrival(req)
    try {
      const trusted = this.access.trusted(ctx)
      const host = checkHost(req, this.opts.hostAllowed, trusted)
      if (host !== null) return this.host.refuse(socket, host)
      const origin = checkOrigin(req, this.opts.originAllowed, this.opts.requireOrigin, trusted)
      if (!origin.ok) {
        if (origin.threw !== undefined) this.host.error('allowedOrigins', origin.threw)
        return this.host.refuse(socket, origin.refusal)
      }
      await this.admitAs(req, socket, head, ctx, admission)
    } finally {
      this.access.settle(req)
    }
  }

  /** Heartbeat: one timer for all sockets; a peer that missed the last ping is terminated. */
  beat(): void {
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

  /** Close every connection with `code`; resolves when all are closed (stragglers terminated after `timeoutMs`). */
  async closeAll(code: number, reason: string, timeoutMs: number): Promise<void> {
    const closing = [...this.connections].map(
      (conn) => new Promise<void>((resolve) => {
        if (conn.ws.readyState === 3 /* CLOSED */) return resolve()
        conn.ws.once('close', () => resolve())
        conn.close(code, reason)
      }),
    )
    const timer = setTimeout(() => { for (const conn of this.connections) conn.ws.terminate() }, timeoutMs)
    await Promise.all(closing)
    clearTimeout(timer)
  }

  private async admitAs(req: IncomingMessage, socket: Duplex, head: Buffer, ctx: Ctx, admission: Admission): Promise<void> {
    const user = await this.access.identify(ctx)
    if (user === undefined) {
      return this.host.refuse(socket, { status: 401, reason: 'unauthenticated', message: 'authentication required' })
    }
    // The flag may have flipped, or the socket died, while we awaited.
    if (this.host.closed) return this.host.refuse(socket, closing())
    if (!this.host.enabled) return this.host.refuse(socket, checkUpgrade(req, false)!)
    if (socket.destroyed) return
    const full = this.host.core.sessions.full(user)
    if (full !== null) return this.host.refuse(socket, full)
    const first = handshakeTopics(req.url, this.opts.maxTopicsPerConnection, this.opts.maxTopicLength)
    if (typeof first === 'string') return this.host.refuse(socket, { status: 400, reason: 'bad_handshake', message: first })
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
    this.host.diagnostics.accepted(socket)
    const conn = new Connection(ws, socket, user, this.host.core)
    this.connections.add(conn)
    // Shared listeners, the connection found through the socket: no
    // closures per connection (an idle one should cost little beyond `ws`).
    ;(ws as Tagged)[CONN] = conn
    ws.on('close', onWsClose) // emitted once; `once` would add a wrapper per socket
    ws.on('error', onWsError)
    // Signed out while being admitted: closed with 4401 at once, nothing subscribed.
    if (!this.host.core.sessions.add(conn, admission)) return
    ws.on('message', onWsMessage)
    ws.on('pong', onWsPong)
    // Topics named in the handshake: subscribed now, no round trip.
    if (first !== null) conn.subscribeAll(first.topics, first.since)
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
