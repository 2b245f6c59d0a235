/**
 * What the host app sees of the channel (bugs 1, 3 and 4 of issue #9, which
 * a real Strapi exposed): its access log, the reason phrase of our answers,
 * and an upgrade that arrives before the middleware could attach itself.
 */
import type { Server } from 'node:http'
import Koa from 'koa'
import { realtime } from 'cms-realtime/koa'
import type { RealtimeHandle } from '../../lib/adapters/api'
import { handshake, listen, rawRequest, type Listening } from '../helpers/net'

let srv: Listening
let rt: RealtimeHandle<unknown>
afterEach(async () => {
  await rt.close(100)
  await srv.close()
})

/** A Koa app with an access log (what koa-logger reads after `next()`), optionally not attached up front. */
async function app(options: { attach: boolean; earlier?: (ctx: Koa.Context) => void; after?: (ctx: Koa.Context) => void }) {
  const log: string[] = []
  const a = new Koa()
  a.use(async (ctx, next) => {
    await next()
    log.push(`${ctx.method} ${ctx.path} ${ctx.status}`)
  })
  if (options.after !== undefined) {
    const after = options.after
    a.use(async (ctx, next) => { await next(); after(ctx) })
  }
  if (options.earlier !== undefined) {
    const earlier = options.earlier
    a.use(async (ctx, next) => { earlier(ctx); await next() })
  }
  const r = realtime({ authenticate: (ctx) => (ctx.get('x-user') === '' ? null : { id: ctx.get('x-user') }) })
  a.use(r)
  rt = r as RealtimeHandle<unknown>
  srv = await listen(a.callback() as unknown as Parameters<typeof listen>[0])
  if (options.attach) r.attach(srv.server as Server)
  return log
}

test('the access log shows 101 for an accepted upgrade and the refusal status for a refused one, not 404', async () => {
  const log = await app({ attach: true })
  expect((await rawRequest(srv.port, handshake(srv.port, '/realtime', { 'x-user': 'anna' }))).status).toBe(101)
  expect((await rawRequest(srv.port, handshake(srv.port, '/realtime'))).status).toBe(401)
  await new Promise((r) => setTimeout(r, 50))
  expect(log).toEqual(['GET /realtime 101', 'GET /realtime 401'])
})

test("an app that treats a status nobody set explicitly as 404 (Strapi's errors middleware) still logs 101", async () => {
  // Strapi: `await next(); if (!ctx.response._explicitStatus) return ctx.notFound()`.
  const log = await app({ attach: true, after: (ctx) => { if (!(ctx.response as { _explicitStatus?: boolean })._explicitStatus) ctx.status = 404 } })
  expect((await rawRequest(srv.port, handshake(srv.port, '/realtime', { 'x-user': 'anna' }))).status).toBe(101)
  expect((await rawRequest(srv.port, handshake(srv.port, '/realtime'))).status).toBe(401)
  await new Promise((r) => setTimeout(r, 50))
  expect(log).toEqual(['GET /realtime 101', 'GET /realtime 401'])
})

test('a reason phrase left by an earlier middleware never goes out with our status (no "200 Unauthorized")', async () => {
  await app({ attach: true, earlier: (ctx) => { ctx.status = 401 } })
  const sse = await rawRequest(srv.port, `GET /realtime/events?topics=projects HTTP/1.1\nHost: 127.0.0.1:${srv.port}\nx-user: anna`, 300)
  expect(sse.statusLine).toBe('HTTP/1.1 200 OK')
  const config = await rawRequest(srv.port, `GET /realtime/config HTTP/1.1\nHost: 127.0.0.1:${srv.port}\nConnection: close`)
  expect(config.statusLine).toBe('HTTP/1.1 200 OK')
})

test('an upgrade that arrives before the middleware was attached is refused truthfully (503 not_attached), and the next one is accepted', async () => {
  await app({ attach: false })
  const first = await rawRequest(srv.port, handshake(srv.port, '/realtime?nonce=nonce-0123456789abcdef', { 'x-user': 'anna' }), 300) // a plain response: the connection stays open
  expect(first.status).toBe(503)
  expect(first.headers['retry-after']).toBe('0')
  expect(JSON.parse(first.body)).toMatchObject({ error: 'not_attached' })
  expect(rt.stats().refusals).toEqual({ not_attached: 1 }) // not stripped_upgrade: no proxy is to blame
  expect(rt.stats().strippedUpgrades).toBe(0)
  const seen = await (await fetch(`${srv.base}/realtime/diagnostics?nonce=nonce-0123456789abcdef`)).json()
  expect(seen).toEqual({ seen: 'refused', reason: 'not_attached', status: 503 })
  expect((await rawRequest(srv.port, handshake(srv.port, '/realtime', { 'x-user': 'anna' }))).status).toBe(101)
})

test('a client that resets its upgraded socket does not surface as an error in the host app (no ECONNRESET on its stderr)', async () => {
  const errors: unknown[] = []
  const a = new Koa()
  a.on('error', (err: unknown) => errors.push(err)) // what Koa would print
  const r = realtime({})
  a.use(r)
  rt = r as RealtimeHandle<unknown>
  srv = await listen(a.callback() as unknown as Parameters<typeof listen>[0])
  r.attach(srv.server as Server)
  const { connect: netConnect } = await import('node:net')
  for (let i = 0; i < 5; i++) {
    const s = netConnect(srv.port, '127.0.0.1')
    s.on('error', () => {})
    s.write(handshake(srv.port, '/realtime').replace(/\n/g, '\r\n') + '\r\n\r\n')
    await new Promise((res) => s.once('data', res)) // the 101
    s.resetAndDestroy() // RST: the server side reads ECONNRESET
  }
  await new Promise((res) => setTimeout(res, 200))
  expect(rt.stats().connections).toBe(0)
  expect(errors).toEqual([])
})
