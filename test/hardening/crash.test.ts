/**
 * Defects 1, 2 and 8 of issue #8: requests that used to end the process or
 * got answers other than the documented JSON. Each test runs against the Koa
 * demo and the Express example, whose upgrades go through the app.
 */
import { connect as netConnect } from 'node:net'
import { createApp as createKoaApp } from '../../examples/koa-cms/app'
import { createApp as createExpressApp } from '../../examples/express-cms/app'
import type { RealtimeHandle } from '../../lib/adapters/api'
import { handshake, listen, rawRequest, type Listening } from '../helpers/net'

interface Started { srv: Listening; rt: RealtimeHandle<unknown> }

const apps: Array<[string, (opts?: Record<string, unknown>) => Promise<Started>]> = [
  ['koa', async (opts = {}) => {
    const { app, rt } = createKoaApp(opts)
    const srv = await listen(app.callback())
    rt.attach(srv.server)
    return { srv, rt: rt as RealtimeHandle<unknown> }
  }],
  ['express', async (opts = {}) => {
    const { app, rt } = createExpressApp(opts)
    const srv = await listen(app as never)
    rt.attach(srv.server)
    return { srv, rt: rt as RealtimeHandle<unknown> }
  }],
]

/** Write `text` on one raw connection and collect everything until the server closes it. */
function rawExchange(port: number, text: string, timeoutMs = 4000): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = netConnect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    const timer = setTimeout(() => { socket.destroy(); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: false }) }, timeoutMs)
    socket.on('data', (c) => chunks.push(c))
    socket.on('error', () => {})
    socket.on('close', () => { clearTimeout(timer); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: true }) })
    socket.write(text.replace(/\r?\n/g, '\r\n'))
  })
}

const upgrade = (port: number, extra: Record<string, string | undefined> = {}) => handshake(port, '/realtime', { 'x-demo-user': 'anna', ...extra }) + '\n\n'

describe.each(apps)('%s: nothing a client sends ends the process', (_name, start) => {
  let s: Started
  afterEach(async () => {
    await s.rt.close(200)
    await s.srv.close()
  })

  test.each([
    ['GET /realtime/config', (port: number) => `GET /realtime/config HTTP/1.1\nHost: 127.0.0.1:${port}\n\n`],
    ['GET /api/projects', (port: number) => `GET /api/projects HTTP/1.1\nHost: 127.0.0.1:${port}\n\n`],
    ['GET / (the page)', (port: number) => `GET / HTTP/1.1\nHost: 127.0.0.1:${port}\n\n`],
  ])('an upgrade pipelined behind %s gets 400 pipelined_upgrade after that answer, and the connection closes', async (_what, first) => {
    s = await start()
    const { text, closed } = await rawExchange(s.srv.port, first(s.srv.port) + upgrade(s.srv.port))
    expect(closed).toBe(true)
    // The first request gets the app's answer (Express has no page: 404), then ours.
    const answers = text.match(/HTTP\/1\.1 \d{3}/g) ?? []
    expect(answers).toHaveLength(2)
    expect(answers[0]).toMatch(/^HTTP\/1\.1 (200|404)$/)
    expect(answers[1]).toBe('HTTP/1.1 400')
    expect(text).toContain('"error":"pipelined_upgrade"')
    expect(s.rt.stats().refusals.pipelined_upgrade).toBe(1)
    // Still serving everyone else.
    expect((await rawRequest(s.srv.port, upgrade(s.srv.port))).status).toBe(101)
  })

  test('an upgrade sent on a connection that holds an open SSE stream is refused and the connection closed', async () => {
    s = await start({ handshakeTimeoutMs: 300 })
    const port = s.srv.port
    const { closed } = await rawExchange(port,
      `GET /realtime/events?topics=projects HTTP/1.1\nHost: 127.0.0.1:${port}\nx-demo-user: anna\n\n` + upgrade(port), 3000)
    expect(closed).toBe(true)
    expect(s.rt.stats().refusals.pipelined_upgrade).toBe(1)
    for (let i = 0; i < 100 && s.rt.stats().fallbackStreams > 0; i++) await new Promise((r) => setTimeout(r, 10))
    expect(s.rt.stats().fallbackStreams).toBe(0)
    expect((await rawRequest(port, upgrade(port))).status).toBe(101)
  })

  test('a client that leaves a stream with an upgrade queued behind it frees the stream at once; 32 of them do not lock its user out', async () => {
    s = await start() // handshakeTimeoutMs at its default: nothing may wait for it
    const port = s.srv.port
    const pair = `GET /realtime/events?topics=projects HTTP/1.1\nHost: 127.0.0.1:${port}\nx-demo-user: anna\n\n` + upgrade(port)
    const left = await Promise.all(Array.from({ length: 32 }, () => new Promise<number>((resolve) => {
      const socket = netConnect(port, '127.0.0.1')
      socket.on('error', () => {})
      socket.write(pair.replace(/\n/g, '\r\n'))
      // The client goes away (a FIN: a tab closed, a proxy gave up).
      setTimeout(() => { socket.end(); resolve(Date.now()) }, 100)
    })))
    const t0 = Math.max(...left)
    for (let i = 0; i < 100 && s.rt.stats().fallbackStreams > 0; i++) await new Promise((r) => setTimeout(r, 10))
    const freed = Date.now() - t0
    expect(s.rt.stats()).toMatchObject({ fallbackStreams: 0, subscriptions: 0 })
    expect(freed).toBeLessThan(1000)
    // Anna's next stream is served, not 429.
    const next = await rawRequest(port, `GET /realtime/events?topics=projects HTTP/1.1\nHost: 127.0.0.1:${port}\nx-demo-user: anna`, 500)
    expect(next.status).toBe(200)
  })

  test('an upgrade sent after the stream opened cuts the connection at once, and a FIN with the stream open frees it at once', async () => {
    s = await start() // handshakeTimeoutMs at its default
    const port = s.srv.port
    const sse = `GET /realtime/events?topics=projects HTTP/1.1\nHost: 127.0.0.1:${port}\nx-demo-user: anna\n\n`
    const run = (then: 'upgrade' | 'fin') => new Promise<number>((resolve) => {
      const socket = netConnect(port, '127.0.0.1')
      socket.on('error', () => {})
      let t0 = 0
      socket.once('data', () => {
        // The stream is open (its head arrived).
        t0 = Date.now()
        if (then === 'upgrade') socket.write(upgrade(port).replace(/\n/g, '\r\n'))
        else socket.end()
      })
      socket.on('close', () => resolve(Date.now() - t0))
      socket.write(sse.replace(/\n/g, '\r\n'))
    })
    expect(await run('upgrade')).toBeLessThan(500)
    expect(s.rt.stats().refusals.pipelined_upgrade).toBe(1)
    await run('fin')
    for (let i = 0; i < 50 && s.rt.stats().fallbackStreams > 0; i++) await new Promise((r) => setTimeout(r, 10))
    expect(s.rt.stats().fallbackStreams).toBe(0)
  })

  test.each([
    ['pipelined in the same packet', true],
    ['sent after the stream opened', false],
  ])('a plain request behind an open SSE stream (%s) closes the connection instead of waiting forever', async (_t, together) => {
    s = await start()
    const port = s.srv.port
    const sse = `GET /realtime/events?topics=projects HTTP/1.1\nHost: 127.0.0.1:${port}\nx-demo-user: anna\n\n`
    const next = `GET /realtime/config HTTP/1.1\nHost: 127.0.0.1:${port}\n\n`
    const { closed } = together
      ? await rawExchange(port, sse + next, 3000)
      : await new Promise<{ closed: boolean }>((resolve) => {
        const socket = netConnect(port, '127.0.0.1')
        const timer = setTimeout(() => { socket.destroy(); resolve({ closed: false }) }, 3000)
        socket.on('data', () => socket.write(next.replace(/\n/g, '\r\n')))
        socket.on('close', () => { clearTimeout(timer); resolve({ closed: true }) })
        socket.write(sse.replace(/\n/g, '\r\n'))
      })
    expect(closed).toBe(true)
    expect(s.rt.stats().refusals.pipelined_request).toBe(1)
    for (let i = 0; i < 100 && s.rt.stats().fallbackStreams > 0; i++) await new Promise((r) => setTimeout(r, 10))
    expect(s.rt.stats()).toMatchObject({ fallbackStreams: 0, subscriptions: 0 })
  })

  test('an allowedOrigins function that throws refuses with 403 origin instead of crashing', async () => {
    s = await start({ allowedOrigins: (o: string) => new URL(o).hostname === 'cms.example.com' })
    const res = await rawRequest(s.srv.port, handshake(s.srv.port, '/realtime', { 'x-demo-user': 'anna', Origin: 'null' }))
    expect(res.status).toBe(403)
    expect(JSON.parse(res.body)).toMatchObject({ error: 'origin' })
    expect(s.rt.stats().refusals.origin).toBe(1)
    expect(s.rt.stats().errors).toBe(1)
  })

  test.each([
    ['an empty element in the subprotocol list', 'cms-realtime.v1,,'],
    ['a repeated subprotocol', 'cms-realtime.v1, cms-realtime.v1'],
    ['a token with a space inside', 'cms-realtime.v1, a b'],
  ])('%s gets the JSON 400 bad_subprotocol, counted', async (_what, value) => {
    s = await start()
    const res = await rawRequest(s.srv.port, upgrade(s.srv.port, { 'Sec-WebSocket-Protocol': value }).trimEnd())
    expect(res.status).toBe(400)
    expect(JSON.parse(res.body)).toMatchObject({ error: 'bad_subprotocol' })
    expect(s.rt.stats().refusals.bad_subprotocol).toBe(1)
  })

  test('a Sec-WebSocket-Protocol header sent twice is refused as JSON 400', async () => {
    s = await start()
    const head = upgrade(s.srv.port, { 'Sec-WebSocket-Protocol': 'cms-realtime.v1' }).trimEnd() + '\nSec-WebSocket-Protocol: cms-realtime.v1'
    const res = await rawRequest(s.srv.port, head)
    expect(res.status).toBe(400)
    expect(JSON.parse(res.body)).toMatchObject({ error: 'bad_subprotocol' })
  })

  test('two Host headers and an HTTP/1.0 upgrade are refused with 400', async () => {
    s = await start()
    const port = s.srv.port
    const twoHosts = await rawRequest(port, upgrade(port).trimEnd() + '\nHost: evil.example')
    expect(twoHosts.status).toBe(400)
    expect(JSON.parse(twoHosts.body)).toMatchObject({ error: 'bad_host' })
    const http10 = await rawRequest(port, upgrade(port).trimEnd().replace('HTTP/1.1', 'HTTP/1.0'))
    expect(http10.status).toBe(400)
    expect(JSON.parse(http10.body)).toMatchObject({ error: 'bad_http_version' })
  })
})
