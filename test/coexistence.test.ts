/**
 * cms-realtime dropped into an app that already has things: another
 * WebSocket server on the same HTTP server, body parsing, compression and
 * session middleware. Each keeps working, and the session cookie is what
 * `authenticate` reads. Run against Koa and Express alike.
 */
import { once } from 'node:events'
import { createServer, type IncomingMessage, type RequestListener } from 'node:http'
import type { Duplex } from 'node:stream'
import { bodyParser } from '@koa/bodyparser'
import KoaRouter from '@koa/router'
import compression from 'compression'
import express from 'express'
import expressSession from 'express-session'
import Koa from 'koa'
import koaCompress from 'koa-compress'
import koaSession from 'koa-session'
import request from 'supertest'
import WebSocket, { WebSocketServer } from 'ws'
import { realtime as expressRealtime } from 'cms-realtime/express'
import { realtime as koaRealtime } from 'cms-realtime/koa'
import type { RealtimeHandle } from '../lib/adapters/api'
import type { RealtimeOptions } from '../lib/types'
import { connect, handshake, listen, rawRequest, Cleanup, type Listening } from './helpers/net'

declare module 'express-session' {
  interface SessionData { user?: { id: string } }
}

type Options = Omit<RealtimeOptions, 'authenticate' | 'server'>
interface Built { handler: RequestListener; rt: RealtimeHandle<unknown> }

/** Session, compression (every size) and a body parser around ours; login and echo routes. */
const apps: Array<[string, (options: Options) => Built]> = [
  ['koa', (options) => {
    const app = new Koa()
    app.keys = ['coexistence-test']
    app.silent = true
    app.use(koaCompress({ threshold: 0 }))
    app.use(koaSession({ signed: true }, app))
    app.use(bodyParser())
    const rt = koaRealtime({ ...options, authenticate: (ctx) => (ctx.session?.user as unknown) ?? null })
    app.use(rt)
    const router = new KoaRouter()
    router.post('/login', (ctx) => {
      ctx.session!.user = { id: (ctx.request.body as { user: string }).user }
      ctx.body = { ok: true }
    })
    router.post('/echo', (ctx) => { ctx.body = ctx.request.body })
    router.get('/page', (ctx) => { ctx.body = 'page '.repeat(200) })
    app.use(router.routes())
    return { handler: app.callback(), rt: rt as RealtimeHandle<unknown> }
  }],
  ['express', (options) => {
    const app = express()
    app.use(compression({ threshold: 0 }))
    app.use(expressSession({ secret: 'coexistence-test', resave: false, saveUninitialized: false }))
    app.use(express.json())
    const rt = expressRealtime({ ...options, authenticate: (req) => req.session.user ?? null })
    app.use(rt)
    app.post('/login', (req, res) => {
      req.session.user = { id: (req.body as { user: string }).user }
      res.json({ ok: true })
    })
    app.post('/echo', (req, res) => { res.json(req.body) })
    app.get('/page', (_req, res) => { res.send('page '.repeat(200)) })
    return { handler: app, rt: rt as RealtimeHandle<unknown> }
  }],
]

/** A second WebSocket app (chat, a dev server's HMR) with its own `upgrade` listener, claiming `/other`. */
function otherWebSocketApp(server: Listening['server'], claimAfterMs = 0): WebSocketServer {
  const wss = new WebSocketServer({ noServer: true })
  wss.on('connection', (ws) => ws.on('message', (m) => ws.send(`echo:${m.toString()}`)))
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (req.url !== '/other') return
    setTimeout(() => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)), claimAfterMs)
  })
  return wss
}

describe.each(apps)('%s app', (_name, build) => {
  const cleanup = new Cleanup()
  afterEach(() => cleanup.run())
  const start = async (options: Options = {}): Promise<Listening & Built> => {
    const built = build(options)
    const srv = await listen(createServer(built.handler))
    built.rt.attach(srv.server)
    cleanup.add(() => srv.close())
    cleanup.add(() => built.rt.close())
    return { ...srv, ...built }
  }

  test('a second ws server on another path keeps working, past the unclaimed-upgrade timeout', async () => {
    const app = await start({ unclaimedUpgradeTimeoutMs: 100 })
    const wss = otherWebSocketApp(app.server, 30) // claims a little later, as an async check would
    cleanup.add(() => new Promise((resolve) => wss.close(resolve)))
    const other = new WebSocket(`ws://127.0.0.1:${app.port}/other`)
    cleanup.add(() => other.terminate())
    await once(other, 'open')
    await new Promise((resolve) => setTimeout(resolve, 200))
    other.send('hi')
    const [reply] = (await once(other, 'message')) as [Buffer]
    expect(reply.toString()).toBe('echo:hi')
    const ours = await connect(app.port, { headers: { cookie: await login(app.base, 'anna') } })
    cleanup.add(() => ours.close())
    expect(await ours.subscribe('notifications:anna')).toMatchObject({ op: 'subscribed' })
    expect(app.rt.stats().refusals.not_found).toBeUndefined()
  })

  test('an upgrade nobody claims gets 404 after unclaimedUpgradeTimeoutMs when another listener exists', async () => {
    const app = await start({ unclaimedUpgradeTimeoutMs: 300 })
    const wss = otherWebSocketApp(app.server)
    cleanup.add(() => new Promise((resolve) => wss.close(resolve)))
    const t0 = Date.now()
    const res = await rawRequest(app.port, handshake(app.port, '/nobody'), 3000)
    expect(res.status).toBe(404)
    expect(res.closed).toBe(true)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(280)
  })

  test('an upgrade nobody claims gets 404 at once when ours is the only listener', async () => {
    const app = await start({ unclaimedUpgradeTimeoutMs: 2000 })
    const t0 = Date.now()
    const res = await rawRequest(app.port, handshake(app.port, '/nobody'), 3000)
    expect(res.status).toBe(404)
    expect(Date.now() - t0).toBeLessThan(1000)
  })

  test('authenticate reads the session cookie: signed in connects and gets its notifications, no cookie gets 401', async () => {
    const app = await start()
    const cookie = await login(app.base, 'ben')
    const client = await connect(app.port, { headers: { cookie } })
    cleanup.add(() => client.close())
    expect(await client.subscribe('notifications:ben')).toMatchObject({ op: 'subscribed' })
    await app.rt.publish('notifications:ben', 'note', { n: 1 })
    expect(await client.op('event')).toMatchObject({ data: { n: 1 } })
    await expect(connect(app.port)).rejects.toMatchObject({ status: 401 })
  })

  test('the body parser and compression keep working for the app, and our config still reads', async () => {
    const app = await start()
    await request(app.base).post('/echo').send({ a: [1, 2] }).expect(200, { a: [1, 2] })
    const page = await request(app.base).get('/page').set('Accept-Encoding', 'gzip').expect(200)
    expect(page.headers['content-encoding']).toBe('gzip')
    const config = await request(app.base).get('/realtime/config').set('Accept-Encoding', 'gzip').expect(200)
    expect(config.body).toMatchObject({ webSocketEnabled: true, url: '/realtime' })
  })

  test('a diagnosis report still counts when the app\'s body parser read the JSON body before us', async () => {
    const app = await start()
    await request(app.base).post('/realtime/diagnostics').set('Origin', app.base)
      .set('Content-Type', 'application/json').send({ cause: 'stripped_upgrade', transport: 'sse' }).expect(204)
    expect(app.rt.stats().diagnosesUnconfirmed).toEqual({ stripped_upgrade: 1 })
  })
})

/** Sign in through the app's session middleware; the Cookie header to send next. */
async function login(base: string, user: string): Promise<string> {
  const res = await request(base).post('/login').send({ user }).expect(200)
  const set = res.headers['set-cookie'] as unknown as string[] | undefined
  expect(set).toBeDefined()
  return set!.map((c) => c.split(';')[0]).join('; ')
}
