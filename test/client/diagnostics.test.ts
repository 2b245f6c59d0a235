/**
 * The nonce diagnosis and the diagnostics report: what the server saw for a
 * handshake's nonce (stripped, refused and why, accepted, nothing), read
 * once; reports validated, bounded and counted in stats(): confirmed by the
 * nonce of a handshake the server saw fail, or apart and rate-limited.
 */
import WebSocket from 'ws'
import { Diagnostics } from '../../lib/server/diagnostics'
import { PROTOCOL } from '../../lib/client'
import { Cleanup, handshake, rawRequest } from '../helpers/net'
import { startApp, startProxy } from './helpers'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

const NONCE = 'abcdefghijklmnop0123456789_-'

async function app(options: Parameters<typeof startApp>[0] = {}) {
  const a = await startApp(options)
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  return a
}

async function seen(base: string, nonce = NONCE) {
  const r = await fetch(`${base}/realtime/diagnostics?nonce=${nonce}`)
  return { status: r.status, body: (await r.json()) as Record<string, unknown> }
}

function tryWs(url: string): Promise<void> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, PROTOCOL)
    ws.on('open', () => { ws.close(); resolve() })
    ws.on('error', () => resolve())
  })
}

describe('what the server saw for a nonce', () => {
  test('a handshake stripped by a proxy', async () => {
    const a = await app()
    const proxy = await startProxy(a.srv.port, true)
    cleanup.add(() => proxy.srv.close())
    await tryWs(`ws://127.0.0.1:${proxy.srv.port}/realtime?nonce=${NONCE}`)
    expect((await seen(a.srv.base)).body).toEqual({ seen: 'stripped_upgrade' })
  })

  test('a bare GET with a nonce and no WebSocket headers records nothing (it cannot evict real records)', async () => {
    const a = await app()
    await fetch(`${a.srv.base}/realtime?nonce=${NONCE}`)
    expect((await seen(a.srv.base)).body).toEqual({ seen: 'nothing' })
    expect(a.rt.stats().refusals).toMatchObject({ plain_request: 1 })
  })

  test('a refusal and its reason', async () => {
    const a = await app({ authenticate: () => null })
    await tryWs(`ws://127.0.0.1:${a.srv.port}/realtime?nonce=${NONCE}`)
    expect((await seen(a.srv.base)).body).toEqual({ seen: 'refused', reason: 'unauthenticated', status: 401 })
  })

  test('a refusal before authentication (bad version) on a raw socket', async () => {
    const a = await app()
    await rawRequest(a.srv.port, handshake(a.srv.port, `/realtime?nonce=${NONCE}`, { 'Sec-WebSocket-Version': '8' }))
    expect((await seen(a.srv.base)).body).toEqual({ seen: 'refused', reason: 'bad_version', status: 426 })
  })

  test('an accepted handshake; then the record is gone (read once)', async () => {
    const a = await app()
    await tryWs(`ws://127.0.0.1:${a.srv.port}/realtime?nonce=${NONCE}`)
    expect((await seen(a.srv.base)).body).toEqual({ seen: 'accepted' })
    expect((await seen(a.srv.base)).body).toEqual({ seen: 'nothing' })
  })

  test('nothing at all', async () => {
    const a = await app()
    expect(await seen(a.srv.base)).toEqual({ status: 200, body: { seen: 'nothing' } })
  })

  test('a malformed nonce is a 400', async () => {
    const a = await app()
    expect((await seen(a.srv.base, 'short')).status).toBe(400)
    expect((await seen(a.srv.base, `${'x'.repeat(65)}`)).status).toBe(400)
  })

  test('records are bounded: the oldest is forgotten first', () => {
    const d = new Diagnostics({ maxEntries: 2 })
    for (const n of ['a', 'b', 'c']) d.stripped({ url: `/realtime?nonce=${n.repeat(16)}` } as never, '127.0.0.1')
    expect(d.lookup('a'.repeat(16))).toEqual({ seen: 'nothing' })
    expect(d.lookup('c'.repeat(16))).toEqual({ seen: 'stripped_upgrade' })
  })

  test('records are limited per client: one client flooding nonces cannot evict the records of another', () => {
    const d = new Diagnostics({ recordBurst: 2, recordsPerSecond: 0.001 })
    const n = (c: string) => c.repeat(16)
    for (const c of ['b', 'c', 'd']) d.stripped({ url: `/realtime?nonce=${n(c)}` } as never, '203.0.113.9')
    d.stripped({ url: `/realtime?nonce=${n('a')}` } as never, '198.51.100.7') // after the flood: a global bucket would be empty
    expect(d.lookup(n('d'))).toEqual({ seen: 'nothing' }) // over the flooding client's burst
    expect(d.lookup(n('a'))).toEqual({ seen: 'stripped_upgrade' })
  })

  test('records expire', () => {
    const d = new Diagnostics({ ttlMs: -1 })
    d.stripped({ url: `/realtime?nonce=${NONCE}` } as never, '127.0.0.1')
    expect(d.lookup(NONCE)).toEqual({ seen: 'nothing' })
  })
})

describe('POST <path>/diagnostics', () => {
  /** What a browser page sends: it always carries Origin on a POST. */
  const post = (base: string, body: string, origin: string | null = base) =>
    fetch(`${base}/realtime/diagnostics`, {
      method: 'POST', body, headers: { 'Content-Type': 'application/json', ...(origin === null ? {} : { Origin: origin }) },
    })

  /** A real stripped handshake through the proxy, so the server holds a record for `nonce`. */
  async function strippedHandshake(a: Awaited<ReturnType<typeof app>>, nonce: string): Promise<void> {
    const proxy = await startProxy(a.srv.port, true)
    cleanup.add(() => proxy.srv.close())
    await tryWs(`ws://127.0.0.1:${proxy.srv.port}/realtime?nonce=${nonce}`)
  }

  test('a report naming the nonce of a handshake the server saw fail is counted once, under what the server saw', async () => {
    const a = await app()
    await strippedHandshake(a, NONCE)
    expect((await seen(a.srv.base)).body).toEqual({ seen: 'stripped_upgrade' }) // what the client reads first
    // The report claims another cause: the server counts what it saw.
    expect((await post(a.srv.base, JSON.stringify({ cause: 'unreachable', transport: 'sse', nonce: NONCE }))).status).toBe(204)
    expect((await post(a.srv.base, JSON.stringify({ cause: 'stripped_upgrade', transport: 'sse', nonce: NONCE }))).status).toBe(204)
    expect(a.rt.stats()).toMatchObject({ diagnoses: { stripped_upgrade: 1 }, diagnosesUnconfirmed: { stripped_upgrade: 1 }, diagnosesRejected: 0 })
  })

  test('a report the server cannot vouch for (no nonce, or one it never saw) is counted apart', async () => {
    const a = await app()
    expect((await post(a.srv.base, JSON.stringify({ cause: 'unreachable', transport: 'none' }))).status).toBe(204)
    expect((await post(a.srv.base, JSON.stringify({ cause: 'stripped_upgrade', transport: 'sse', nonce: 'z'.repeat(20) }))).status).toBe(204)
    expect(a.rt.stats()).toMatchObject({ diagnoses: {}, diagnosesUnconfirmed: { unreachable: 1, stripped_upgrade: 1 } })
  })

  test('spoofed reports neither count nor silence a real one: no Origin → 403; 50 with made-up nonces leave the real report counted', async () => {
    const a = await app()
    // A script, from the same address as the editors (one NAT): no Origin first.
    for (let i = 0; i < 10; i++) {
      const r = await post(a.srv.base, JSON.stringify({ cause: 'stripped_upgrade', transport: 'sse' }), null)
      expect(r.status).toBe(403)
    }
    // Then with a forged Origin and made-up nonces, past the per-address limit.
    const codes = new Set<number>()
    for (let i = 0; i < 50; i++) {
      const body = JSON.stringify({ cause: 'stripped_upgrade', transport: 'sse', nonce: `fake${String(i).padStart(16, '0')}` })
      codes.add((await post(a.srv.base, body)).status)
    }
    expect(codes).toEqual(new Set([204, 429]))
    // The real browser behind the same NAT: its handshake was seen, its report counts.
    await strippedHandshake(a, NONCE)
    await seen(a.srv.base)
    expect((await post(a.srv.base, JSON.stringify({ cause: 'stripped_upgrade', transport: 'sse', nonce: NONCE }))).status).toBe(204)
    expect(a.rt.stats().diagnoses).toEqual({ stripped_upgrade: 1 })
    expect(a.rt.stats().diagnosesUnconfirmed.stripped_upgrade).toBeLessThanOrEqual(10)
  })

  test.each([
    ['not JSON', 'nope'],
    ['an unknown cause', JSON.stringify({ cause: 'aliens', transport: 'sse' })],
    ['an unknown transport', JSON.stringify({ cause: 'offline', transport: 'pigeon' })],
    ['a JSON array', '[]'],
  ])('%s gets 400 and counts nothing', async (_t, body) => {
    const a = await app()
    const r = await post(a.srv.base, body)
    expect(r.status).toBe(400)
    expect(((await r.json()) as { error: string }).error).toBe('bad_report')
    expect(a.rt.stats()).toMatchObject({ diagnoses: {}, diagnosesUnconfirmed: {}, diagnosesRejected: 1 })
  })

  test('a body over 1 KiB gets 413', async () => {
    const a = await app()
    const r = await post(a.srv.base, JSON.stringify({ cause: 'offline', transport: 'sse', pad: 'x'.repeat(2000) }))
    expect(r.status).toBe(413)
  })

  test('a PUT gets 405', async () => {
    const a = await app()
    expect((await fetch(`${a.srv.base}/realtime/diagnostics`, { method: 'PUT' })).status).toBe(405)
  })

  test('unconfirmed reports past the rate limit (a burst of 10 per address) get 429 and are not counted', async () => {
    const a = await app()
    const body = JSON.stringify({ cause: 'offline', transport: 'sse' })
    const codes = []
    for (let i = 0; i < 12; i++) codes.push((await post(a.srv.base, body)).status)
    expect(codes).toEqual([...Array(10).fill(204), 429, 429])
    expect(a.rt.stats()).toMatchObject({ diagnosesUnconfirmed: { offline: 10 }, diagnosesRejected: 2 })
  })
})
