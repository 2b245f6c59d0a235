import type { IncomingMessage } from 'node:http'

/** How an adapter binds the core to its framework. */
export interface Binding<Ctx = IncomingMessage> {
  /**
   * Route each upgrade for our path through the server's `request`
   * listeners (the app), so the app's middleware (sessions, auth, logging)
   * runs before the handshake, the way express-ws and koa-easy-ws do. The
   * app must then hand the request to `acceptUpgrade` (the adapters do).
   * Default false: the handshake completes directly, `authenticate(req)`.
   */
  upgradesThroughApp?: boolean
  /** The request body the app's body parser already read (Koa `ctx.request.body`, Express `req.body`), for our POST routes. */
  bodyOf?: (ctx: Ctx) => unknown
  /** Does the app trust its proxy's `X-Forwarded-*` headers (Koa `app.proxy`, Express `trust proxy`)? Option `trustProxy` wins. */
  trustProxy?: (ctx: Ctx) => boolean
}
