/**
 * Express adapter (Express 5, and 4): `app.use(realtime(options))`. Thin:
 * everything happens in the core; this only speaks Express.
 */
import type { NextFunction, Request, RequestHandler, Response } from 'express'
import { createRealtime } from '../server/realtime'
import type { RealtimeOptions, User } from '../types'
import { withApi, type RealtimeHandle } from './api'
import { mountError } from './mount'

export type ExpressRealtimeOptions<U = User> = RealtimeOptions<Request, U>
export type ExpressRealtime<U = User> = RequestHandler & RealtimeHandle<Request, U>
export type { RealtimeHandle } from './api'

/**
 * Express middleware serving `<path>/config` and the WebSocket channel at
 * `<path>`. Upgrades run through the app's middleware before the handshake,
 * so `authenticate(req)` sees `req.session`/`req.user` as a normal request would.
 * Mount it anywhere (`app.use('/cms', rt)`, a Router): it matches `req.originalUrl`.
 */
export function realtime<U = User>(options: ExpressRealtimeOptions<U> = {}): ExpressRealtime<U> {
  const core = createRealtime<Request, U>(options, {
    upgradesThroughApp: true,
    bodyOf: (req) => req.body as unknown,
    trustProxy: expressTrust,
  })
  function cmsRealtime(req: Request, res: Response, next: NextFunction): void {
    // Express 4 ignores a returned promise, so failures go to next(err) here.
    core.serve(req, res, req, req.originalUrl).then(
      (served) => {
        if (served) return
        const misMounted = mountError(core.opts.path, req.originalUrl, req.url)
        if (misMounted !== undefined) next(misMounted)
        else next()
      },
      (err: unknown) => next(err),
    )
  }
  return withApi<typeof cmsRealtime, Request, U>(cmsRealtime, core)
}

/** Express's `trust proxy` setting, compiled by Express into a function of the peer address and hop. */
function expressTrust(req: Request): boolean {
  const trust = req.app.get('trust proxy fn') as unknown
  return typeof trust === 'function' && (trust as (addr: string, i: number) => boolean)(req.socket.remoteAddress ?? '', 0) === true
}
