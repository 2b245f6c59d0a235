/**
 * Koa adapter: `app.use(realtime(options))`. Thin: everything happens in the
 * core; this only speaks Koa (ctx in, ctx out).
 */
import type { Context, Middleware, Next } from 'koa'
import { createRealtime } from '../realtime'
import type { RealtimeOptions } from '../types'
import { withApi, type RealtimeHandle } from './api'

export type KoaRealtimeOptions = RealtimeOptions<Context>
export type KoaRealtime = Middleware & RealtimeHandle<Context>
export type { RealtimeHandle } from './api'

/**
 * Koa middleware serving `<path>/config` and the WebSocket channel at
 * `<path>`. Upgrades run through the app's middleware before the handshake,
 * so `authenticate(ctx)` sees `ctx.state`/`ctx.session` as a normal request would.
 */
export function realtime(options: KoaRealtimeOptions = {}): KoaRealtime {
  const core = createRealtime<Context>(options, { upgradesThroughApp: true })
  async function cmsRealtime(ctx: Context, next: Next): Promise<void> {
    core.attachFrom(ctx.req)
    if (core.isPendingUpgrade(ctx.req)) {
      ctx.respond = false // the socket is ours (or answered) from here on
      await core.acceptUpgrade(ctx.req, ctx)
      return
    }
    const reply = core.route(ctx.req, ctx.originalUrl)
    if (reply === undefined) return next()
    ctx.status = reply.status
    const { 'Content-Length': _length, ...headers } = reply.headers
    ctx.set(headers)
    ctx.body = reply.body
  }
  return withApi(cmsRealtime, core)
}
