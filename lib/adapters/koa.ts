/**
 * Koa adapter: `app.use(realtime(options))`. Thin: everything happens in the
 * core; this only speaks Koa.
 */
import type { Context, Middleware, Next } from 'koa'
import { createRealtime } from '../server/realtime'
import type { RealtimeOptions, User } from '../types'
import { withApi, type RealtimeHandle } from './api'
import { mountError } from './mount'

export type KoaRealtimeOptions<U = User> = RealtimeOptions<Context, U>
export type KoaRealtime<U = User> = Middleware & RealtimeHandle<Context, U>
export type { RealtimeHandle } from './api'

/**
 * Koa middleware serving `<path>/config` and the WebSocket channel at
 * `<path>`. Upgrades run through the app's middleware before the handshake,
 * so `authenticate(ctx)` sees `ctx.state`/`ctx.session` as a normal request would.
 */
export function realtime<U = User>(options: KoaRealtimeOptions<U> = {}): KoaRealtime<U> {
  const core = createRealtime<Context, U>(options, {
    upgradesThroughApp: true,
    bodyOf: koaBody,
    // Koa's own switch for X-Forwarded-* (what ctx.host and ctx.ip honour).
    trustProxy: (ctx) => ctx.app.proxy === true,
  })
  async function cmsRealtime(ctx: Context, next: Next): Promise<void> {
    // The core writes to the raw response (streams included), so Koa must not.
    if (await core.serve(ctx.req, ctx.res, ctx, ctx.originalUrl)) {
      // Through Koa's setter, so it counts as set (`_explicitStatus`): an
      // upgrade's status lives on a response Koa never writes, and Strapi's
      // errors middleware turns an unset status into 404 after `next()`.
      if (!ctx.res.headersSent) ctx.status = ctx.res.statusCode
      ctx.respond = false
      return
    }
    const misMounted = mountError(core.opts.path, ctx.originalUrl, ctx.url)
    if (misMounted !== undefined) throw misMounted
    await next()
  }
  return withApi<typeof cmsRealtime, Context, U>(cmsRealtime, core)
}

/** What a Koa body parser (`@koa/bodyparser`, `koa-body`) left on the request; Koa itself types no body. */
function koaBody(ctx: Context): unknown {
  return (ctx.request as { body?: unknown }).body
}
