/**
 * Defects 4-7, 9 and 10 of issue #8: one origin policy for every transport,
 * bounded SSE and replay memory, diagnostics that cannot be gamed, limits
 * sized to the protocol, and proxy trust that follows the framework's.
 */
import { connect as netConnect, type Socket } from 'node:net'
import express from 'express'
import Koa from 'koa'
import { realtime as expressRealtime } from 'cms-realtime/express'
import { realtime as koaRealtime } from 'cms-realtime/koa'
import { MemoryBus } from '../../lib/bus/memory'
import type { RealtimeHandle } from '../../lib/adapters/api'
import { fixture, type Fixture } from '../helpers/fixture'
import { handshake, listen, rawRequest, type Listening } from '../helpers/net'
import { openStream } from '../helpers/sse'

const NONCE = 'n0nce-abcdefghijklmnop'
const stop: Array<() => Promise<unknown> | unknown> = []
afterEach(async () => {
  for (const fn of stop.splice(0).reverse()) await fn()
})

async function koa(setup: (app: Koa) => void, options: Parameters<typeof koaRealtime>[0] = {}): Promise<{ srv: Listening; rt: RealtimeHandle<unknown> }> {
  const app = new Koa()
  setup(app)
  const rt = koaRealtime(options)
  app.use(rt)
  app.use((ctx) => { ctx.body = 'page' })
  const srv = await listen(app.callback())
  rt.attach(srv.server)
  stop.push(() => srv.close(), () => rt.close(200))
  return { srv, rt: rt as RealtimeHandle<unknown> }
}

/** The common credentialed CORS middleware that echoes any Origin (what many apps mount first). */
function permissiveCors(app: Koa): void {
  app.use(async (ctx, next) => {
    const origin = ctx.get('Origin')
    if (origin !== '') {
      ctx.set('Access-Control-Allow-Origin', origin)
      ctx.set('Access-Control-Allow-Credentials', 'true')
    }
    await next()
  })
}

describe('one origin policy for every transport (defect 4)', () => {
  test('a cross-origin page cannot read the SSE stream even when the app echoes every Origin with credentials', async () => {
    const { srv, rt } = await koa(permissiveCors)
    const r = await fetch(`${srv.base}/realtime/events?topics=notifications:anna`, { headers: { Origin: 'http://evil.example' } })
    expect(r.status).toBe(403)
    expect(((await r.json()) as { error: string }).error).toBe('origin')
    expect(r.headers.get('access-control-allow-origin')).toBeNull()
    expect(r.headers.get('access-control-allow-credentials')).toBeNull()
    expect(rt.stats()).toMatchObject({ fallbackStreams: 0, refusals: { origin: 1 } })
  })

  test('an allowed origin gets our own CORS answer; the same origin gets none', async () => {
    const { srv } = await koa(permissiveCors, { allowedOrigins: ['http://admin.example'] })
    const ctrl = new AbortController()
    stop.push(() => ctrl.abort())
    const r = await fetch(`${srv.base}/realtime/events?topics=projects`, { headers: { Origin: 'http://admin.example' }, signal: ctrl.signal })
    expect(r.status).toBe(200)
    expect(r.headers.get('access-control-allow-origin')).toBe('http://admin.example')
    expect(r.headers.get('access-control-allow-credentials')).toBe('true')
    expect(r.headers.get('vary')).toContain('Origin')
    const same = await fetch(`${srv.base}/realtime/config`, { headers: { Origin: srv.base } })
    expect(same.headers.get('access-control-allow-origin')).toBeNull()
  })

  test('requireOrigin applies to SSE too', async () => {
    const { srv } = await koa(() => {}, { requireOrigin: true })
    expect((await fetch(`${srv.base}/realtime/events?topics=projects`)).status).toBe(403)
  })

  test('cross-origin diagnosis reports are refused and not counted', async () => {
    const { srv, rt } = await koa(permissiveCors)
    const r = await fetch(`${srv.base}/realtime/diagnostics`, {
      method: 'POST', body: JSON.stringify({ cause: 'stripped_upgrade', transport: 'sse' }), headers: { Origin: 'http://evil.example' },
    })
    expect(r.status).toBe(403)
    expect(rt.stats().diagnoses).toEqual({})
  })
})

/** A raw client that asks for a stream and then never reads. */
function nonReader(port: number, path: string, extra = ''): Promise<Socket> {
  return new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1', () => {
      s.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n${extra}\r\n`)
      s.once('data', () => { s.pause(); resolve(s) })
    })
    s.on('error', () => {})
    stop.push(() => s.destroy())
  })
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

describe('bounded memory (defects 5 and 6)', () => {
  let f: Fixture
  afterEach(async () => { await f?.close() })

  test('a non-reading SSE client with Connection: close is cut off: socket, subscriptions and timer gone; each event counted once', async () => {
    f = await fixture({ maxBufferedBytes: 64 * 1024 })
    await nonReader(f.srv.port, '/realtime/events?topics=import')
    await until(() => f.rt.stats().subscriptions === 1, 'the stream to join')
    const payload = 'x'.repeat(50_000)
    let published = 0
    while (f.rt.stats().fallbackStreams > 0 && published < 2000) {
      await f.rt.publish('import', 'bulk', payload)
      published++
      if (published % 20 === 0) await new Promise((r) => setImmediate(r))
    }
    await until(() => f.rt.stats().subscriptions === 0, 'the stream to leave the hub')
    const s = f.rt.stats()
    expect(s).toMatchObject({ fallbackStreams: 0, subscriptions: 0, topics: 0, slowConsumersClosed: 1 })
    // Each event the stream was offered is counted once, delivered or dropped.
    expect(s.eventsDelivered + s.drops).toBeLessThanOrEqual(published)
    for (let i = 0; i < 10; i++) await f.rt.publish('import', 'bulk', payload)
    await new Promise((r) => setTimeout(r, 50))
    expect(f.rt.stats()).toMatchObject({ eventsDelivered: s.eventsDelivered, drops: s.drops })
  })

  test.each(['websocket', 'sse'] as const)('a replay larger than maxBufferedBytes is answered with resync, not queued (%s)', async (transport) => {
    const bus = new MemoryBus({ historySize: 200 })
    f = await fixture({ bus })
    const first = await f.rt.publish('project:1', 'big', 'x')
    for (let i = 0; i < 100; i++) await f.rt.publish('project:1', 'big', 'y'.repeat(60_000))
    const last = await f.rt.publish('project:1', 'small', 1)
    const clients: Array<() => Array<Record<string, unknown>>> = []
    for (let i = 0; i < 20; i++) {
      if (transport === 'websocket') {
        const c = await f.connect()
        c.send({ op: 'subscribe', topic: 'project:1', since: first.id })
        clients.push(() => c.frames)
      } else {
        const s = await openStream(`${f.srv.base}/realtime/events?topics=project:1&since=${encodeURIComponent(first.id)}`)
        stop.push(() => s.close())
        clients.push(() => s.frames())
      }
    }
    await until(() => clients.every((c) => c().some((fr) => fr.op === 'subscribed')), 'every subscription')
    for (const frames of clients) {
      const fr = frames()
      expect(fr.slice(0, 2)).toEqual([
        { op: 'resync', topic: 'project:1' },
        { op: 'subscribed', topic: 'project:1', cursor: last.id, recovered: false },
      ])
      expect(fr.filter((x) => x.op === 'event')).toHaveLength(0)
    }
    expect(f.rt.stats().slowConsumersClosed).toBe(0)
  })
})

describe('limits sized to the protocol (defect 9)', () => {
  let f: Fixture
  afterEach(async () => { await f?.close() })

  test('maxPayload defaults to 4 KiB: a 5 KB frame closes with 1009, the largest legal frame passes', async () => {
    f = await fixture()
    const ok = await f.connect()
    expect(await ok.subscribe('t'.repeat(200), 's'.repeat(64))).toMatchObject({ op: 'subscribed' })
    const big = await f.connect()
    big.send(JSON.stringify({ op: 'ping', pad: 'x'.repeat(5000) }))
    expect(await big.closed()).toBe(1009)
  })
})

describe('diagnostics that cannot be gamed (defect 7)', () => {
  test('reports are rate-limited per client: one flooding client does not lock another out', async () => {
    const { srv, rt } = await koa((app) => { app.proxy = true })
    const post = (ip: string) => fetch(`${srv.base}/realtime/diagnostics`, {
      method: 'POST', body: JSON.stringify({ cause: 'offline', transport: 'sse' }), headers: { 'X-Forwarded-For': ip, Origin: srv.base },
    }).then((r) => r.status)
    const flood: number[] = []
    for (let i = 0; i < 30; i++) flood.push(await post('203.0.113.9'))
    expect(flood.filter((s) => s === 429).length).toBeGreaterThan(15)
    expect(await post('198.51.100.7')).toBe(204)
    expect(rt.stats().diagnosesUnconfirmed.offline).toBeLessThan(15)
  })

  test('an upgrade that timed out in a slow app middleware is not later diagnosed as stripped_upgrade', async () => {
    const { srv, rt } = await koa((app) => {
      app.use(async (_ctx, next) => { await new Promise((r) => setTimeout(r, 300)); await next() })
    }, { handshakeTimeoutMs: 100 })
    const res = await rawRequest(srv.port, handshake(srv.port, `/realtime?nonce=${NONCE}`))
    expect(res.status).toBe(503)
    await new Promise((r) => setTimeout(r, 450))
    expect(rt.stats().refusals).toEqual({ timeout: 1 })
    const seen = await (await fetch(`${srv.base}/realtime/diagnostics?nonce=${NONCE}`)).json()
    expect(seen).toEqual({ seen: 'refused', reason: 'timeout', status: 503 })
  })
})

describe('proxy trust follows the framework (defect 10)', () => {
  // nginx's `proxy_set_header Host $host` drops the port; a trusted proxy's X-Forwarded-Host keeps it.
  const behindProxy = (port: number) => handshake(port, '/realtime', {
    Host: 'cms', 'X-Forwarded-Host': 'cms:8080', 'X-Forwarded-Proto': 'http', Origin: 'http://cms:8080',
  })

  test.each([
    ['Koa app.proxy = true', true, 101],
    ['Koa app.proxy = false (default)', false, 403],
  ])('%s: %s → %i', async (_t, proxy, status) => {
    const { srv } = await koa((app) => { app.proxy = proxy })
    expect((await rawRequest(srv.port, behindProxy(srv.port))).status).toBe(status)
  })

  test.each([
    ["Express trust proxy 'loopback'", 'loopback', 101],
    ['Express without trust proxy', false, 403],
  ] as const)('%s: %s → %i', async (_t, trust, status) => {
    const app = express()
    app.set('trust proxy', trust)
    const rt = expressRealtime()
    app.use(rt)
    const srv = await listen(app as never)
    rt.attach(srv.server)
    stop.push(() => srv.close(), () => rt.close(200))
    expect((await rawRequest(srv.port, behindProxy(srv.port))).status).toBe(status)
  })

  test('RFC 7239 Forwarded host= is honoured when trusted; spoofed headers are ignored when not', async () => {
    const f = await fixture({ trustProxy: true })
    stop.push(() => f.close())
    const fwd = handshake(f.srv.port, '/realtime', { Host: 'cms', Forwarded: 'for=1.2.3.4;host="cms:8080";proto=https', Origin: 'https://cms:8080' })
    expect((await rawRequest(f.srv.port, fwd)).status).toBe(101)
    const g = await fixture()
    stop.push(() => g.close())
    const spoof = handshake(g.srv.port, '/realtime', { 'X-Forwarded-Host': 'evil.example', Origin: 'http://evil.example' })
    expect((await rawRequest(g.srv.port, spoof)).status).toBe(403)
  })
})
