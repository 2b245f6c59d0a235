/**
 * The mounting rule (docs/mounting.md): option `path` is the absolute path
 * the server sees, mount prefix included; adapters match the original URL.
 * Every supported mounting, end to end: config → connect to config.url →
 * subscribe → publish → the event arrives. Then the mountings that cannot
 * work, and how they make themselves known.
 */
import { createServer, type RequestListener } from 'node:http'
import { format } from 'node:util'
import createDebug from 'debug'
import express from 'express'
import Koa from 'koa'
import KoaRouter from '@koa/router'
import mount from 'koa-mount'
import OldKoaRouter from 'koa-router'
import request from 'supertest'
import { realtime as expressRealtime, type ExpressRealtime } from 'cms-realtime/express'
import { realtime as koaRealtime, type KoaRealtime } from 'cms-realtime/koa'
import type { RealtimeHandle } from '../lib/adapters/api'
import { connect, handshake, listen, rawRequest, Cleanup } from './helpers/net'

type Rt = RealtimeHandle<unknown>
interface Mounted { handler: RequestListener; rt: Rt }

/** A Koa app with `mountIt` placing the middleware, plus an app route under the same prefix. */
function koaApp(mountIt: (app: Koa, rt: KoaRealtime) => void, path = '/cms/realtime'): Mounted {
  const app = new Koa()
  app.silent = true
  const rt = koaRealtime({ path })
  mountIt(app, rt)
  app.use((ctx) => { if (ctx.path === '/cms/api/ping') ctx.body = 'pong' })
  return { handler: app.callback(), rt: rt as Rt }
}

function expressApp(mountIt: (app: express.Express, rt: ExpressRealtime) => void, path = '/cms/realtime'): Mounted {
  const app = express()
  const rt = expressRealtime({ path })
  mountIt(app, rt)
  app.get('/cms/api/ping', (_req, res) => { res.send('pong') })
  return { handler: app, rt: rt as Rt }
}

// koa-router's own types predate Koa 3's; the middleware is the same function.
type OldMiddleware = OldKoaRouter.IMiddleware

const mountings: Array<[string, () => Mounted]> = [
  ['Koa app.use(rt), no prefix', () => koaApp((app, rt) => app.use(rt))],
  ['koa-mount: app.use(mount("/cms", rt))', () => koaApp((app, rt) => app.use(mount('/cms', rt)))],
  ['@koa/router: router.all("/cms/realtime{/*rest}", rt)', () => koaApp((app, rt) => {
    const router = new KoaRouter()
    router.all('/cms/realtime{/*rest}', rt)
    app.use(router.routes())
  })],
  ['@koa/router with prefix "/cms": router.all("/realtime{/*rest}", rt)', () => koaApp((app, rt) => {
    const router = new KoaRouter({ prefix: '/cms' })
    router.all('/realtime{/*rest}', rt)
    app.use(router.routes())
  })],
  ['@koa/router nested: parent.use("/cms", child.routes())', () => koaApp((app, rt) => {
    const child = new KoaRouter()
    child.all('/realtime{/*rest}', rt)
    const parent = new KoaRouter()
    parent.use('/cms', child.routes())
    app.use(parent.routes())
  })],
  ['koa-router package: router.all("/cms/realtime{/*rest}", rt)', () => koaApp((app, rt) => {
    const router = new OldKoaRouter()
    router.all('/cms/realtime{/*rest}', rt as unknown as OldMiddleware)
    app.use(router.routes() as unknown as Koa.Middleware)
  })],
  ['koa-router package nested: parent.use("/cms", child.routes())', () => koaApp((app, rt) => {
    const child = new OldKoaRouter()
    child.all('/realtime{/*rest}', rt as unknown as OldMiddleware)
    const parent = new OldKoaRouter()
    parent.use('/cms', child.routes())
    app.use(parent.routes() as unknown as Koa.Middleware)
  })],
  ['Express app.use("/cms", rt)', () => expressApp((app, rt) => app.use('/cms', rt))],
  ['express.Router(): router.use(rt), app.use("/cms", router)', () => expressApp((app, rt) => {
    const router = express.Router()
    router.use(rt)
    app.use('/cms', router)
  })],
  ['express.Router(): router.use("/realtime", rt), app.use("/cms", router)', () => expressApp((app, rt) => {
    const router = express.Router()
    router.use('/realtime', rt)
    app.use('/cms', router)
  })],
]

describe('mounting under a prefix, end to end', () => {
  const cleanup = new Cleanup()
  afterEach(() => cleanup.run())

  test.each(mountings)('%s', async (_title, build) => {
    const { handler, rt } = build()
    const srv = await listen(createServer(handler))
    cleanup.add(() => srv.close())
    cleanup.add(() => rt.close())
    // No attach(): the config request attaches, as in a browser's first visit.
    const config = await request(srv.base).get('/cms/realtime/config').expect(200)
    expect(config.body).toMatchObject({ webSocketEnabled: true, url: '/cms/realtime' })
    const client = await connect(srv.port, { path: config.body.url as string })
    cleanup.add(() => client.close())
    expect(await client.subscribe('projects')).toMatchObject({ op: 'subscribed' })
    await rt.publish('projects', 'project-updated', { id: 1 })
    expect(await client.op('event')).toMatchObject({ topic: 'projects', type: 'project-updated', data: { id: 1 } })
    // The app's own routes under the prefix are untouched.
    await request(srv.base).get('/cms/api/ping').expect(200, 'pong')
  })
})

describe('mountings that break the rule say so', () => {
  const cleanup = new Cleanup()
  afterEach(() => cleanup.run())

  test('Express: mounted under "/cms" with path "/realtime", our request fails with a TypeError naming "/cms/realtime"', async () => {
    const errors: unknown[] = []
    const app = express()
    const rt = expressRealtime({ path: '/realtime' })
    cleanup.add(() => rt.close())
    app.use('/cms', rt)
    app.get('/cms/api/ping', (_req, res) => { res.send('pong') })
    app.use((err: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
      errors.push(err)
      res.status(500).end()
    })
    await request(app).get('/cms/realtime/config').expect(500)
    expect(errors[0]).toBeInstanceOf(TypeError)
    expect((errors[0] as Error).message).toMatch(/mounted under "\/cms" but option "path" is "\/realtime".*\{ path: "\/cms\/realtime" \}/)
    // Everything else under the prefix keeps working.
    await request(app).get('/cms/api/ping').expect(200, 'pong')
    expect(errors).toHaveLength(1)
  })

  test('koa-mount: mounted under "/cms" with path "/realtime", our request fails with a TypeError naming "/cms/realtime"', async () => {
    const errors: unknown[] = []
    const app = new Koa()
    app.silent = true
    app.on('error', (err: unknown) => errors.push(err))
    const rt = koaRealtime({ path: '/realtime' })
    cleanup.add(() => rt.close())
    app.use(mount('/cms', rt))
    app.use((ctx) => { if (ctx.path === '/cms/api/ping') ctx.body = 'pong' })
    await request(app.callback()).get('/cms/realtime').expect(500)
    expect(errors[0]).toBeInstanceOf(TypeError)
    expect((errors[0] as Error).message).toContain('{ path: "/cms/realtime" }')
    await request(app.callback()).get('/cms/api/ping').expect(200, 'pong')
  })

  describe('a middleware the app never reaches', () => {
    let logs: string[]
    let restore: () => void
    beforeEach(() => {
      logs = []
      const saved = createDebug.log
      const namespaces = createDebug.disable()
      createDebug.enable('cms-realtime')
      createDebug.log = (...args: unknown[]) => { logs.push(format(...args)) }
      restore = () => {
        createDebug.log = saved
        createDebug.disable()
        if (namespaces !== '') createDebug.enable(namespaces)
      }
    })
    afterEach(() => restore())

    test.each([
      ['@koa/router', (rt: KoaRealtime): Koa.Middleware => {
        const router = new KoaRouter()
        router.use('/cms', rt)
        return router.routes() as unknown as Koa.Middleware
      }],
      ['koa-router', (rt: KoaRealtime): Koa.Middleware => {
        const router = new OldKoaRouter()
        router.use('/cms', rt as unknown as OldMiddleware)
        return router.routes() as unknown as Koa.Middleware
      }],
    ])('%s router.use("/cms", rt) runs only beside a matching route: the upgrade gets the app 404, and the log says why', async (_name, routes) => {
      const app = new Koa()
      app.silent = true
      const rt = koaRealtime({ path: '/cms/realtime' })
      app.use(routes(rt))
      const srv = await listen(createServer(app.callback()))
      cleanup.add(() => srv.close())
      cleanup.add(() => rt.close())
      rt.attach(srv.server)
      await request(srv.base).get('/cms/realtime/config').expect(404)
      const res = await rawRequest(srv.port, handshake(srv.port, '/cms/realtime'))
      expect(res.status).toBe(404)
      expect(res.closed).toBe(true)
      expect(logs.join('\n')).toMatch(/answered by the app with 404: the app never passed it to the cms-realtime middleware.*mounted where option "path" points/)
      expect(rt.stats().refusals.app_response).toBe(1)
    })

    test('Express: an upgrade on "path" outside the prefix the middleware is mounted under gets the app 404, and the log says why', async () => {
      const app = express()
      const rt = expressRealtime({ path: '/realtime' })
      app.use('/cms', rt)
      const srv = await listen(createServer(app))
      cleanup.add(() => srv.close())
      cleanup.add(() => rt.close())
      rt.attach(srv.server)
      const res = await rawRequest(srv.port, handshake(srv.port, '/realtime'))
      expect(res.status).toBe(404)
      expect(logs.join('\n')).toMatch(/upgrade for \/realtime answered by the app with 404: the app never passed it/)
    })
  })
})
