/**
 * The `upgrade` listener: the one place a raw, unauthenticated socket enters
 * the library, so nothing may escape it. It validates the handshake, routes
 * it through the app's middleware when the adapter asks for that (so the
 * CMS's session and auth run first), times out an app that never passes it
 * on, and answers every refusal as a complete HTTP response.
 */
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import debug from 'debug'
import type { Diagnostics } from './diagnostics'
import { writeRefusal, type Refusal } from './handshake'
import { pathnameOf } from './http'
import type { AttachableServer, RefusalReason } from '../types'

const log = debug('cms-realtime')

/** What the upgrade path needs from the core. */
export interface UpgradeHost<Ctx> {
  readonly path: string
  readonly viaApp: boolean
  readonly handshakeTimeoutMs: number
  readonly unclaimedUpgradeTimeoutMs: number
  readonly diagnostics: Diagnostics
  /** A refusal that applies before anything else (closing, disabled, HTTP/RFC 6455 checks), or null. */
  gate(req: IncomingMessage): Refusal | null
  /** The handshake is sound and the app (if any) passed it on: authenticate, then accept or refuse. */
  admit(req: IncomingMessage, socket: Duplex, head: Buffer, ctx: Ctx): Promise<void>
  /**
   * A sound handshake arrived: its admission starts now, before the app's
   * middleware (where a session lookup may take its time), so a logout
   * meanwhile is replayed on it. `settled` ends an admission that never reached `admit`.
   */
  arrived(req: IncomingMessage): void
  settled(req: IncomingMessage): void
  /**
   * An upgrade was pipelined behind a response still being written on
   * `socket`. True when that response is an event stream, which never ends:
   * the connection is cut at once. Otherwise the stream not yet open learns
   * it must not open (see SseStreams).
   */
  pipelined(socket: Duplex): boolean
  /** Count a refusal. */
  refused(reason: RefusalReason): void
  /** Log and count an exception that was caught. */
  error(where: string, err: unknown): void
}

interface Pending {
  socket: Duplex
  head: Buffer
  res: ServerResponse
  timer: NodeJS.Timeout
  /** Our 'finish' listener on `res` (the app answered by itself): removed once we take the socket back. */
  onFinish: () => void
}

export class Upgrades<Ctx> {
  private readonly pending = new WeakMap<IncomingMessage, Pending>()
  /** Every upgrade handed to the app: if one reaches us after it timed out, it is no plain GET. */
  private readonly routed = new WeakSet<IncomingMessage>()
  /** The status each refused handshake socket was answered with. */
  private readonly answered = new WeakMap<Duplex, number>()

  constructor(private readonly host: UpgradeHost<Ctx>) {}

  /** The listener for `server`'s `upgrade` event. Never throws. */
  listener(server: AttachableServer): (req: IncomingMessage, socket: Duplex, head: Buffer) => void {
    return (req, socket, head) => {
      try {
        this.onUpgrade(server, req, socket, head)
      } catch (err) {
        this.host.error('upgrade', err)
        this.refuse(socket, internalError())
      }
    }
  }

  /** Is `req` an upgrade waiting for the app's middleware to pass it on? */
  isPending(req: IncomingMessage): boolean {
    return this.pending.has(req)
  }

  /** Was `req` an upgrade we routed through the app (and have answered, or will)? */
  wasRouted(req: IncomingMessage): boolean {
    return this.routed.has(req)
  }

  /** The app passed the upgrade on: take the socket back and admit it. */
  async accept(req: IncomingMessage, ctx: Ctx): Promise<void> {
    const p = this.pending.get(req)
    if (p === undefined) return
    this.pending.delete(req)
    clearTimeout(p.timer)
    p.res.off('finish', p.onFinish)
    p.res.detachSocket(p.socket as never)
    await this.admitSafely(req, p.socket, p.head, ctx)
    // What the app's own logging reads (Koa's ctx.status, Express's
    // res.statusCode): the real outcome, not the framework's default 404.
    p.res.statusCode = this.answered.get(p.socket) ?? 101
    // The app's request is over: 'finish' lets what watches it (Koa's and
    // Express's on-finished) conclude now and drop its listeners on the
    // socket, which belongs to `ws` from here; else a client's reset later
    // reached the app as an error and was printed on its stderr.
    p.res.emit('finish')
  }

  /** Write `refusal` as a complete HTTP response, count it, and close the socket. */
  refuse(socket: Duplex, refusal: Refusal): void {
    this.answered.set(socket, refusal.status)
    this.host.refused(refusal.reason)
    this.host.diagnostics.refused(socket, refusal)
    log('refused handshake: %d %s', refusal.status, refusal.reason)
    writeRefusal(socket, refusal)
  }

  private onUpgrade(server: AttachableServer, req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // Until `ws` owns the socket, a reset must not become an uncaught error.
    socket.on('error', onSocketError)
    const ours = pathnameOf(req.url) === this.host.path
    // An upgrade pipelined behind a request still being answered (or an open
    // SSE stream) on the same connection: that response owns the socket, so
    // nothing can be written until it finishes. Browsers never do this.
    const previous = (socket as { _httpMessage?: ServerResponse | null })._httpMessage
    if (previous != null) {
      if (!ours && server.listenerCount('upgrade') > 1) return
      if (this.host.pipelined(socket)) {
        this.host.refused('pipelined_upgrade')
        log('cut a connection that sent an upgrade behind its open event stream (%s)', req.url)
        socket.destroy()
        return
      }
      this.afterPrevious(previous, socket, req)
      return
    }
    if (!ours) return this.foreign(server, socket)
    this.host.diagnostics.watch(req, socket)
    const refusal = this.host.gate(req)
    if (refusal !== null) return this.refuse(socket, refusal)
    this.host.arrived(req)
    // Our own 'request' listener (see Realtime.attach) is not the app.
    if (!this.host.viaApp || server.listenerCount('request') <= 1) {
      void this.admitSafely(req, socket, head, req as Ctx)
      return
    }
    // Let the app's middleware see the request. If it answers by itself (its
    // auth says 401, its router 404), that answer goes to the socket whole.
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket as never)
    const onFinish = (): void => {
      if (this.pending.get(req)?.res === res) {
        this.pending.delete(req)
        this.host.settled(req)
        clearTimeout(timer)
        this.host.refused('app_response')
        log('upgrade for %s answered by the app with %d%s', req.url, res.statusCode, res.statusCode === 404 ? NOT_PASSED_ON : '')
      }
      const s = socket as Duplex & { destroySoon?: () => void }
      if (s.destroySoon) s.destroySoon()
      else s.end()
    }
    res.on('finish', onFinish)
    const timer = setTimeout(() => {
      if (this.pending.get(req)?.res !== res) return
      this.pending.delete(req)
      this.host.settled(req)
      res.off('finish', onFinish)
      res.detachSocket(socket as never)
      this.refuse(socket, {
        status: 503, reason: 'timeout', message: 'the app did not pass the upgrade on to cms-realtime in time: is the middleware mounted?',
      })
    }, this.host.handshakeTimeoutMs)
    timer.unref()
    this.pending.set(req, { socket, head, res, timer, onFinish })
    this.routed.add(req)
    // The app's own request listeners run inside this emit; a throw from one
    // of them lands in our catch, and the socket gets a 500.
    server.emit('request', req, res)
  }

  /** `admit`, with any rejection turned into a refusal: the promise is never left to reject unhandled. */
  private async admitSafely(req: IncomingMessage, socket: Duplex, head: Buffer, ctx: Ctx): Promise<void> {
    try {
      await this.host.admit(req, socket, head, ctx)
    } catch (err) {
      this.host.error('admit', err)
      if (!socket.destroyed) this.refuse(socket, internalError())
    }
  }

  /**
   * Answer a pipelined upgrade once the response before it has finished, so
   * the HTTP stream stays well-formed; a response that never finishes (an
   * SSE stream) has the connection cut after `handshakeTimeoutMs`.
   */
  private afterPrevious(previous: ServerResponse, socket: Duplex, req: IncomingMessage): void {
    const refusal: Refusal = {
      status: 400, reason: 'pipelined_upgrade', message: 'a WebSocket handshake must not be pipelined behind another request',
    }
    const answer = (): void => {
      clearTimeout(timer)
      previous.off('finish', answer)
      socket.off('close', gone)
      socket.off('end', leave) // the refusal flushes, then closes
      this.refuse(socket, refusal)
    }
    // Node stops watching a socket once it emits 'upgrade': a client that
    // leaves (a FIN) would leave the socket half open, and the response
    // before it (an SSE stream's subscriptions, its per-user slot) held
    // until the timeout. It is closed at once, and that response with it.
    const leave = (): void => { socket.destroy() }
    const gone = (): void => {
      clearTimeout(timer)
      previous.off('finish', answer)
      socket.off('end', leave)
      this.host.refused(refusal.reason)
    }
    const timer = setTimeout(() => {
      log('cut a connection whose pipelined upgrade waited behind an unfinished response (%s)', req.url)
      socket.destroy()
    }, this.host.handshakeTimeoutMs)
    timer.unref()
    previous.once('finish', answer)
    socket.once('end', leave)
    socket.once('close', gone)
  }

  /**
   * An upgrade for a path that is not ours: leave it to the other listeners.
   * If there are none, answer 404 at once; otherwise answer 404 only if
   * nobody has written to the socket after `unclaimedUpgradeTimeoutMs`.
   */
  private foreign(server: AttachableServer, socket: Duplex): void {
    const notFound: Refusal = { status: 404, reason: 'not_found', message: 'no WebSocket endpoint at this path' }
    if (server.listenerCount('upgrade') <= 1) return this.refuse(socket, notFound)
    // Not ours to guard: the listener that claims it sets its own handlers.
    socket.off('error', onSocketError)
    const net = socket as Duplex & { bytesWritten?: number }
    const timer = setTimeout(() => {
      if (!socket.destroyed && (net.bytesWritten ?? 0) === 0) {
        socket.on('error', onSocketError)
        this.refuse(socket, notFound)
      }
    }, this.host.unclaimedUpgradeTimeoutMs)
    timer.unref()
    socket.once('close', () => clearTimeout(timer))
  }
}

/** A 404 from the app for our own path means the middleware is not where `path` points. */
const NOT_PASSED_ON =
  ': the app never passed it to the cms-realtime middleware. Is it mounted where option "path" points ' +
  '(mount prefix included)? Routers such as @koa/router run use() middleware only for requests that match ' +
  'one of their routes: see docs/mounting.md'

function internalError(): Refusal {
  return { status: 500, reason: 'internal_error', message: 'the server failed to handle this handshake' }
}

export function onSocketError(this: Duplex): void {
  this.destroy()
}
