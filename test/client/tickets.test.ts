/**
 * Bearer tokens from a browser (issue #9, bug 6). Browser WebSockets and
 * EventSource cannot send `Authorization`; the client's `token` hook trades
 * the token for a one-time ticket (`POST <path>/ticket`), and the server
 * turns the ticket back into the header before the app's middleware runs.
 * The token never appears in a URL; a ticket works once, until it expires,
 * on every node that shares `ticketSecret`.
 */
import { createServer, type IncomingMessage } from 'node:http'
import Koa from 'koa'
import WebSocket from 'ws'
import { realtime } from '../../lib/adapters/koa'
import { Tickets } from '../../lib/sessions/tickets'
import { PROTOCOL, type RealtimeOptions } from '../../lib/types'
import { Cleanup, listen } from '../helpers/net'
import { client, collect, sleep, startApp, waitFor, type App } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

/** Valid tokens → user ids; a test revokes one by deleting it. */
function bearerAuth(tokens: Map<string, string>): Pick<RealtimeOptions, 'authenticate'> {
  return {
    authenticate: (req: unknown) => {
      const h = (req as IncomingMessage).headers.authorization
      const id = h?.startsWith('Bearer ') ? tokens.get(h.slice(7)) : undefined
      return id === undefined ? null : { id }
    },
  }
}

/** Every request target the server saw, upgrades included: what an access log would hold. */
function urlsSeen(a: App): string[] {
  const urls: string[] = []
  a.srv.server.prependListener('request', (req: IncomingMessage) => urls.push(req.url ?? ''))
  a.srv.server.prependListener('upgrade', (req: IncomingMessage) => urls.push(req.url ?? ''))
  return urls
}

async function app(options: RealtimeOptions = {}): Promise<App> {
  const a = await startApp(options)
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  return a
}

async function mint(base: string, authorization?: string): Promise<{ status: number; body: { ticket?: string; error?: string; expiresInMs?: number } }> {
  const r = await fetch(`${base}/realtime/ticket`, { method: 'POST', headers: authorization === undefined ? {} : { authorization } })
  return { status: r.status, body: (await r.json()) as { ticket?: string } }
}

function openWs(url: string): Promise<{ ws?: WebSocket; status: number; body: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, PROTOCOL)
    ws.once('open', () => resolve({ ws, status: 101, body: '' }))
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    ws.once('error', () => {})
  })
}

describe('POST <path>/ticket and the door', () => {
  test('a ticket is minted only for credentials authenticate accepts', async () => {
    const a = await app(bearerAuth(new Map([['tok-anna', 'anna']])))
    expect(await mint(a.srv.base)).toMatchObject({ status: 400, body: { error: 'no_credentials' } })
    expect(await mint(a.srv.base, 'Bearer nope')).toMatchObject({ status: 401, body: { error: 'unauthenticated' } })
    const ok = await mint(a.srv.base, 'Bearer tok-anna')
    expect(ok).toMatchObject({ status: 200, body: { expiresInMs: 30_000 } })
    expect(ok.body.ticket).toMatch(/^[A-Za-z0-9_-]{40,}$/)
    expect(ok.body.ticket).not.toContain('tok-anna')
    const get = await fetch(`${a.srv.base}/realtime/ticket`)
    expect(get.status).toBe(405)
    expect(get.headers.get('allow')).toBe('POST, OPTIONS')
  })

  test('an upgrade with a ticket is the user; the ticket works once; a forged one is refused; the token is in no URL', async () => {
    const a = await app(bearerAuth(new Map([['tok-anna', 'anna']])))
    const urls = urlsSeen(a)
    const { body } = await mint(a.srv.base, 'Bearer tok-anna')
    const url = `ws://127.0.0.1:${a.srv.port}/realtime?ticket=${body.ticket}`
    const first = await openWs(url)
    expect(first.status).toBe(101)
    first.ws!.send(JSON.stringify({ op: 'subscribe', topic: 'notifications:anna' }))
    await waitFor(() => a.rt.stats().subscriptions === 1, "anna's own notifications: the ticket carried her identity")
    first.ws!.close()
    const replay = await openWs(url)
    expect(replay.status).toBe(401)
    expect(JSON.parse(replay.body)).toMatchObject({ error: 'unauthenticated', message: expect.stringMatching(/already used/) })
    const forged = body.ticket!.slice(0, -4) + (body.ticket!.endsWith('AAAA') ? 'BBBB' : 'AAAA')
    expect((await openWs(`ws://127.0.0.1:${a.srv.port}/realtime?ticket=${forged}`)).status).toBe(401)
    expect(urls.length).toBeGreaterThan(3)
    expect(urls.filter((u) => u.includes('tok-anna'))).toEqual([])
  })

  test('a bad ticket is a 401 even when the request would pass without one (the client must learn to fetch another)', async () => {
    const a = await app() // no authenticate: everyone is anonymous
    expect((await openWs(`ws://127.0.0.1:${a.srv.port}/realtime?ticket=garbage`)).status).toBe(401)
    const sse = await fetch(`${a.srv.base}/realtime/events?topics=x&ticket=garbage`)
    expect(sse.status).toBe(401)
    expect(await sse.json()).toMatchObject({ error: 'unauthenticated', reason: expect.stringMatching(/malformed ticket/) })
  })

  test('a ticket expires after ticketTtlMs', async () => {
    const a = await app({ ...bearerAuth(new Map([['tok-anna', 'anna']])), ticketTtlMs: 50 })
    const { body } = await mint(a.srv.base, 'Bearer tok-anna')
    await sleep(80)
    const r = await openWs(`ws://127.0.0.1:${a.srv.port}/realtime?ticket=${body.ticket}`)
    expect(r.status).toBe(401)
    expect(r.body).toMatch(/expired/)
  })

  test('across nodes: a ticket minted on one node opens on another with the same ticketSecret, not with the default per-process key', async () => {
    const tokens = new Map([['tok-anna', 'anna']])
    const secret = 'a shared secret of the deployment'
    const [a, b, c] = await Promise.all([
      app({ ...bearerAuth(tokens), ticketSecret: secret }),
      app({ ...bearerAuth(tokens), ticketSecret: secret }),
      app(bearerAuth(tokens)),
    ])
    const t1 = (await mint(a.srv.base, 'Bearer tok-anna')).body.ticket
    const onB = await openWs(`ws://127.0.0.1:${b.srv.port}/realtime?ticket=${t1}`)
    expect(onB.status).toBe(101)
    onB.ws!.close()
    const t2 = (await mint(a.srv.base, 'Bearer tok-anna')).body.ticket
    const onC = await openWs(`ws://127.0.0.1:${c.srv.port}/realtime?ticket=${t2}`)
    expect(onC.status).toBe(401)
    expect(onC.body).toMatch(/not valid here/)
  })

  test("Koa: the app's own middleware before cms-realtime sees the Authorization header, on the upgrade and on the SSE stream", async () => {
    const tokens = new Map([['tok-anna', 'anna']])
    const seen: (string | undefined)[] = []
    const logged: string[] = []
    const koa = new Koa()
    // An access log (Strapi's `strapi::logger`) writes ctx.url once the request is answered.
    koa.use(async (ctx, next) => {
      await next()
      logged.push(ctx.url)
    })
    // The CMS's own auth (Strapi's, say) sets ctx.state.user from the bearer token.
    koa.use(async (ctx, next) => {
      const h = ctx.get('authorization')
      seen.push(h)
      const id = tokens.get(h.replace(/^Bearer /, ''))
      if (id !== undefined) ctx.state.user = { id }
      await next()
    })
    const rt = realtime({ authenticate: (ctx) => ctx.state.user as { id: string } | undefined })
    koa.use(rt)
    const srv = await listen(createServer(koa.callback()))
    cleanup.add(() => srv.close())
    cleanup.add(() => rt.close())
    const t = (await mint(srv.base, 'Bearer tok-anna')).body.ticket
    const ws = await openWs(`ws://127.0.0.1:${srv.port}/realtime?nonce=n1&ticket=${t}&topics=notifications:anna`)
    expect(ws.status).toBe(101)
    ws.ws!.close()
    const t2 = (await mint(srv.base, 'Bearer tok-anna')).body.ticket
    const ac = new AbortController()
    const sse = await fetch(`${srv.base}/realtime/events?topics=notifications:anna&ticket=${t2}`, { signal: ac.signal })
    expect(sse.status).toBe(200)
    ac.abort()
    // mint, upgrade, mint, stream: the header each time, restored from the ticket on the two connections.
    expect(seen).toEqual(['Bearer tok-anna', 'Bearer tok-anna', 'Bearer tok-anna', 'Bearer tok-anna'])
    // The log holds the routes, and no ticket (each was a 500-character line in Strapi's log).
    await waitFor(() => logged.length === 4, 'four log lines')
    expect(logged).toEqual(['/realtime/ticket', '/realtime?nonce=n1&topics=notifications:anna', '/realtime/ticket', '/realtime/events?topics=notifications:anna'])
  })

  test('Tickets: a redeemed ticket is remembered until it expires, then forgotten (bounded memory)', () => {
    const t = new Tickets('0123456789abcdef', 1000)
    const now = 1_000_000
    const minted = Array.from({ length: 600 }, () => t.mint('Bearer x', now))
    for (const m of minted) expect(t.redeem(m, now + 10).ok).toBe(true)
    expect(t.redeem(minted[0]!, now + 10)).toEqual({ ok: false, why: 'ticket already used' })
    // Past their expiry, the next sweep drops them all (they would be refused as expired anyway).
    const later = Array.from({ length: 300 }, () => t.mint('Bearer x', now + 5000))
    for (const m of later) t.redeem(m, now + 5000)
    expect((t as unknown as { used: Map<string, number> }).used.size).toBeLessThan(400)
  })
})

describe('the client with a token hook', () => {
  test('WebSocket: goes live as the token user, asks for the token on every reconnect, and a refreshed token is used', async () => {
    const tokens = new Map([['tok-1', 'anna']])
    const a = await app(bearerAuth(tokens))
    const urls = urlsSeen(a)
    let current = 'tok-1'
    let calls = 0
    const c = client(a.srv.base, { token: () => { calls++; return Promise.resolve(current) } })
    cleanup.add(() => c.close())
    const got = collect(c, 'notifications:anna')
    await waitFor(() => c.state === 'live' && a.rt.stats().subscriptions === 1, 'live and subscribed')
    expect(calls).toBe(1)
    await a.rt.publish('notifications:anna', 'hello', { n: 1 })
    await waitFor(() => got.length === 1, 'the first event')
    // The token is refreshed and the old one revoked; the server restarts the connection.
    tokens.set('tok-2', 'anna')
    tokens.delete('tok-1')
    current = 'tok-2'
    a.rt.webSocketEnabled = false
    a.rt.webSocketEnabled = true
    await waitFor(() => c.state === 'live' && a.rt.stats().subscriptions === 1 && calls === 2, 'live again with the new token')
    await a.rt.publish('notifications:anna', 'hello', { n: 2 })
    await waitFor(() => got.length === 2, 'the second event')
    expect(got.map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }])
    expect(urls.filter((u) => u.includes('tok-'))).toEqual([])
  })

  test('no token (null) or a refused token: signed-out, and no connection attempt', async () => {
    const a = await app(bearerAuth(new Map([['tok-1', 'anna']])))
    const none = client(a.srv.base, { token: () => null })
    cleanup.add(() => none.close())
    const reasons: string[] = []
    none.on('signed-out', (v) => reasons.push(v.reason))
    await waitFor(() => none.state === 'signed-out', 'signed-out without a token')
    const bad = client(a.srv.base, { token: () => 'revoked' })
    cleanup.add(() => bad.close())
    bad.on('signed-out', (v) => reasons.push(v.reason))
    await waitFor(() => bad.state === 'signed-out', 'signed-out with a refused token')
    await sleep(300)
    expect(reasons).toEqual(['no credentials', 'unauthenticated'])
    expect(a.upgrades).toBe(0)
  })

  test('SSE fallback: streams with a ticket, and when the stream ends reopens with a fresh one, losing nothing', async () => {
    const tokens = new Map([['tok-1', 'anna']])
    const a = await app({ ...bearerAuth(tokens), webSocketEnabled: false, fallbackWhenDisabled: true })
    let calls = 0
    const c = client(a.srv.base, { token: () => { calls++; return 'tok-1' } })
    cleanup.add(() => c.close())
    const got = collect(c, 'notifications:anna')
    await waitFor(() => c.state === 'fallback' && a.rt.stats().fallbackStreams === 1, 'streaming')
    await a.rt.publish('notifications:anna', 'n', { n: 1 })
    await waitFor(() => got.length === 1, 'the first event')
    const before = calls
    // The stream drops (a proxy timeout, a deploy): cut every socket.
    for (const s of a.sockets) s.destroy()
    await a.rt.publish('notifications:anna', 'n', { n: 2 }) // while nobody is connected
    await waitFor(() => got.length === 2 && c.state === 'fallback', 'the missed event, after reopening', 8000)
    expect(calls).toBeGreaterThan(before) // a new ticket, not the spent one
    expect(got.map((e) => e.data)).toEqual([{ n: 1 }, { n: 2 }])
    expect(a.rt.stats().refusals.unauthenticated ?? 0).toBe(0) // never presented a spent ticket
  })
})
