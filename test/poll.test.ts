/**
 * Long polling on the wire (raw HTTP): bad input gets the SSE stream's
 * clear 4xx; an answer is one complete JSON body (Content-Length, never
 * chunked, never cached); polls held until something waits; recovery
 * across polls exactly once and in order, or `resync`; revocation answered
 * at once with 0 events after; vanished pollers leave nothing behind.
 */
import { get, type IncomingMessage } from 'node:http'
import { createRealtime, type Realtime } from '../lib/server/realtime'
import type { RealtimeOptions } from '../lib/types'
import { encodeCursors } from '../lib/client/cursor-vector'
import { MemoryBus } from '../lib/bus/memory'
import { listen, rawRequest, type Listening } from './helpers/net'

let rt: Realtime
let srv: Listening
async function start(options: RealtimeOptions = {}) {
  rt = createRealtime(options)
  srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
}
afterEach(async () => {
  await rt?.close()
  await srv?.close()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Answer {
  status: number
  headers: IncomingMessage['headers']
  body: { cursor: string; session?: string; ticket?: string; frames: Array<Record<string, unknown>>; error?: string; reason?: string }
  ms: number
}

/** One poll, with what came back and how long it was held. */
function poll(path: string, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Answer> {
  const t0 = Date.now()
  return new Promise((resolve, reject) => {
    const req = get(`${srv.base}${path}`, { headers, signal }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (text += c))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: JSON.parse(text) as Answer['body'], ms: Date.now() - t0 }))
    })
    req.on('error', reject)
  })
}

const events = (a: Answer) => a.body.frames.filter((f) => f.op === 'event')

/** The next poll of the tab `prev` answered, as the client sends it: its cursors and its session. */
const after = (prev: Answer, topics: string) => `/realtime/poll?topics=${topics}&since=${prev.body.cursor}&session=${prev.body.session}`

describe('bad requests get the same clear 4xx as the stream, and leave nothing behind', () => {
  const options = {
    authenticate: (req: IncomingMessage) => (req.headers['x-user'] === undefined ? null : { id: String(req.headers['x-user']) }),
    maxTopicsPerConnection: 3,
  }
  test.each([
    ['no topics', 400, 'bad_topics', '/realtime/poll', {}],
    ['an empty topic in the list', 400, 'bad_topics', '/realtime/poll?topics=a,,b', {}],
    ['a topic with a space', 400, 'bad_topics', '/realtime/poll?topics=a%20b', {}],
    ['a topic listed twice', 400, 'bad_topics', '/realtime/poll?topics=a,a', {}],
    ['too many topics', 400, 'too_many_topics', '/realtime/poll?topics=a,b,c,d', {}],
    ['a since vector of the wrong length', 400, 'bad_cursor', '/realtime/poll?topics=a,b&since=x', {}],
    ['a since cursor with bad percent-encoding', 400, 'bad_cursor', '/realtime/poll?topics=a&since=%25zz', {}],
    ['no user', 401, 'unauthenticated', '/realtime/poll?topics=a', { 'x-anon': '1' }],
    ["another user's notifications", 403, 'forbidden', '/realtime/poll?topics=projects,notifications:bob', {}],
    ['a spent or forged ticket', 401, 'unauthenticated', '/realtime/poll?topics=a&ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', {}],
  ] as const)('%s → %i %s', async (_t, status, error, path, headers) => {
    await start(options)
    const h: Record<string, string> = { ...headers }
    if (h['x-anon'] === undefined) h['x-user'] = 'anna'
    const r = await poll(path, h)
    expect(r.status).toBe(status)
    expect(r.body.error).toBe(error)
    expect(r.headers['cache-control']).toBe('no-store')
    expect(rt.stats()).toMatchObject({ transports: { poll: 0 }, subscriptions: 0, topics: 0 })
  })

  test('a POST gets 405 naming GET; with fallback ["sse"] there is no poll route, and config lists none', async () => {
    await start()
    const r = await fetch(`${srv.base}/realtime/poll?topics=a`, { method: 'POST' })
    expect(r.status).toBe(405)
    expect(r.headers.get('allow')).toBe('GET')
    await rt.close()
    await srv.close()
    await start({ fallback: ['sse'] })
    expect((await fetch(`${srv.base}/realtime/poll?topics=a`)).status).toBe(404)
    const cfg = (await (await fetch(`${srv.base}/realtime/config`)).json()) as { transports: Array<{ transport: string }> }
    expect(cfg.transports.map((t) => t.transport)).toEqual(['websocket', 'sse'])
  })
})

test('config lists every transport in order, keeping `fallback` for older clients', async () => {
  await start({ pollHoldMs: 20_000 })
  const cfg = await (await fetch(`${srv.base}/realtime/config`)).json()
  expect(cfg).toMatchObject({
    fallback: { transport: 'sse', url: '/realtime/events' },
    transports: [
      { transport: 'websocket', url: '/realtime', heartbeatMs: 25_000 },
      { transport: 'sse', url: '/realtime/events', heartbeatMs: 25_000 },
      { transport: 'poll', url: '/realtime/poll', holdMs: 20_000 },
    ],
  })
})

test('a first poll is answered at once with where each topic starts; the next is held until an event, then answered at once', async () => {
  await start()
  const first = await poll('/realtime/poll?topics=projects,project:1')
  expect(first.status).toBe(200)
  expect(first.ms).toBeLessThan(1000)
  // One complete response: every intermediary passes it whole.
  expect(first.headers['content-length']).toBe(String(Buffer.byteLength(JSON.stringify(first.body))))
  expect(first.headers['transfer-encoding']).toBeUndefined()
  expect(first.headers['cache-control']).toBe('no-store')
  expect(first.body.frames.map((f) => [f.op, f.topic])).toEqual([['subscribed', 'projects'], ['subscribed', 'project:1']])
  const held = poll(after(first, 'projects,project:1'))
  await sleep(150)
  expect(rt.stats()).toMatchObject({ transports: { poll: 1 }, subscriptions: 2, connections: 0 })
  const t0 = Date.now()
  const id = (await rt.publish('project:1', 'item-added', { id: 7 })).id
  const a = await held
  expect(Date.now() - t0).toBeLessThan(200)
  expect(events(a)).toEqual([{ op: 'event', topic: 'project:1', id, type: 'item-added', data: { id: 7 } }])
  expect(a.body.cursor.split(',')[1]).toBe(encodeURIComponent(id))
  await sleep(20)
  // Between two polls the tab stays subscribed, as a socket does, keeping what arrives for the next poll.
  expect(rt.stats()).toMatchObject({ transports: { poll: 0 }, subscriptions: 2 })
  const id2 = (await rt.publish('projects', 'project-updated', { id: 1 })).id
  const b = await poll(after(a, 'projects,project:1'))
  expect(b.ms).toBeLessThan(200)
  expect(events(b).map((e) => e.id)).toEqual([id2])
})

test('a quiet poll is answered empty after pollHoldMs, with the cursors it came with', async () => {
  await start({ pollHoldMs: 300 })
  const first = await poll('/realtime/poll?topics=a')
  const a = await poll(after(first, 'a'))
  expect(a.ms).toBeGreaterThanOrEqual(280)
  expect(a.ms).toBeLessThan(1500)
  expect(a.body).toEqual({ cursor: first.body.cursor, session: first.body.session, frames: [] })
})

test('a poller that keeps polling while events are published at random gets each exactly once, in order, across 2 topics', async () => {
  await start({ pollHoldMs: 2000 })
  const N = 400
  let stop = false
  const seen = { a: [] as number[], b: [] as number[] }
  let polls = 0
  let prev = await poll('/realtime/poll?topics=a,b')
  const loop = (async () => {
    while (!stop || seen.a.length + seen.b.length < N) {
      // Every third poll forgets its session (another node, a lost answer): a new tab catches up from history.
      const r = await poll(polls++ % 3 === 2 ? `/realtime/poll?topics=a,b&since=${prev.body.cursor}` : after(prev, 'a,b'))
      expect(r.body.frames.filter((f) => f.op === 'resync')).toEqual([])
      for (const e of events(r)) seen[e.topic as 'a' | 'b'].push((e.data as { n: number }).n)
      prev = r
    }
  })()
  for (let n = 0; n < N; n++) {
    await rt.publish(n % 2 === 0 ? 'a' : 'b', 'n', { n })
    if (n % 7 === 0) await sleep(Math.random() * 8)
  }
  stop = true
  await loop
  expect(seen.a).toEqual(Array.from({ length: N / 2 }, (_x, i) => 2 * i))
  expect(seen.b).toEqual(Array.from({ length: N / 2 }, (_x, i) => 2 * i + 1))
  expect(rt.stats().recovery.resynced).toBe(0)
})

test('a burst between two polls comes in the next answer whole; past maxBufferedBytes, what waits is dropped and the next poll gets resync', async () => {
  await start({ maxBufferedBytes: 8192 })
  const first = await poll('/realtime/poll?topics=a')
  for (let n = 0; n < 40; n++) await rt.publish('a', 'n', { n })
  const whole = await poll(after(first, 'a'))
  expect(events(whole).map((e) => (e.data as { n: number }).n)).toEqual(Array.from({ length: 40 }, (_x, i) => i))
  expect(whole.body.frames.some((f) => f.op === 'resync')).toBe(false)
  // Nobody polls while 300 events of 100 bytes arrive: bounded, then dropped.
  for (let n = 0; n < 300; n++) await rt.publish('a', 'n', { n, pad: 'x'.repeat(40) })
  const after300 = await poll(after(whole, 'a'))
  expect(after300.body.frames[0]).toEqual({ op: 'resync', topic: 'a' })
  expect(Buffer.byteLength(JSON.stringify(after300.body))).toBeLessThan(8192 + 1024)
  expect(rt.stats().slowConsumersClosed).toBe(1)
  // The cursor moved past what was dropped: the next event comes next, once.
  const id = (await rt.publish('a', 'n', { n: 'next' })).id
  const next = await poll(after(after300, 'a'))
  expect(events(next).map((e) => e.id)).toEqual([id])
})

test('a cursor history no longer covers gets resync and a fresh cursor at once', async () => {
  await start()
  const r = await poll(`/realtime/poll?topics=a&since=${encodeCursors(['nope-1'])}`)
  expect(r.ms).toBeLessThan(1000)
  expect(r.body.frames.map((f) => f.op)).toEqual(['resync', 'subscribed'])
  expect(r.body.frames[1]).toMatchObject({ topic: 'a', recovered: false })
  expect(rt.stats().recovery.resynced).toBe(1)
})

describe('session life: answered at once, 0 events after', () => {
  const signedIn = new Set<string>()
  const options = (more: RealtimeOptions = {}): RealtimeOptions => ({
    authenticate: (req: IncomingMessage) => {
      const id = req.headers['x-user']
      return typeof id === 'string' && signedIn.has(id) ? { id } : null
    },
    authorize: (user, topic) => !topic.startsWith('project:') || (user as { id: string }).id !== 'ben' || signedIn.has('ben-member'),
    ...more,
  })
  beforeEach(() => {
    signedIn.clear()
    signedIn.add('ben').add('ben-member')
  })

  test('a logout answers the held poll with the end of the session; the next poll is a 401, not a loop', async () => {
    await start(options())
    const first = await poll('/realtime/poll?topics=projects', { 'x-user': 'ben' })
    const held = poll(after(first, 'projects'), { 'x-user': 'ben' })
    await sleep(100)
    signedIn.delete('ben')
    expect(rt.disconnect({ user: 'ben' })).toBe(1)
    const a = await held
    expect(a.body.frames).toEqual([{ op: 'closed', code: 4401, reason: expect.any(String) }])
    await rt.publish('projects', 'updated', {})
    expect((await poll(after(a, 'projects'), { 'x-user': 'ben' })).status).toBe(401)
    const next = await poll(`/realtime/poll?topics=projects&since=${a.body.cursor}`, { 'x-user': 'ben' })
    expect(next.status).toBe(401)
    expect(rt.stats()).toMatchObject({ subscriptions: 0, transports: { poll: 0 } })
  })

  test('reauthorize answers the held poll with unsubscribed; a poll for the topic after is a 403, and no event of it ever reached ben', async () => {
    await start(options())
    const first = await poll('/realtime/poll?topics=projects,project:1', { 'x-user': 'ben' })
    const held = poll(after(first, 'projects,project:1'), { 'x-user': 'ben' })
    await sleep(100)
    signedIn.delete('ben-member')
    expect(await rt.reauthorize({ user: 'ben' })).toBe(1)
    await rt.publish('project:1', 'secret', {})
    const a = await held
    expect(a.body.frames).toEqual([{ op: 'unsubscribed', topic: 'project:1', reason: 'forbidden' }])
    expect((await poll(`/realtime/poll?topics=projects,project:1&since=${a.body.cursor}`, { 'x-user': 'ben' })).status).toBe(403)
  })

  test('revalidate ends a held poll whose user is no longer valid', async () => {
    await start(options({ revalidate: (u) => signedIn.has((u as { id: string }).id), revalidateMs: 100 }))
    const first = await poll('/realtime/poll?topics=projects', { 'x-user': 'ben' })
    const held = poll(after(first, 'projects'), { 'x-user': 'ben' })
    await sleep(50)
    signedIn.delete('ben')
    const a = await held
    expect(a.ms).toBeLessThan(1000)
    expect(a.body.frames[0]).toMatchObject({ op: 'closed', code: 4401 })
  })

  test('held polls count against maxConnectionsPerUser like streams', async () => {
    await start(options({ maxConnectionsPerUser: 2 }))
    const ctrl = new AbortController()
    const cursor = (await poll('/realtime/poll?topics=projects', { 'x-user': 'ben' })).body.cursor
    const held = [0, 1].map(() => poll(`/realtime/poll?topics=projects&since=${cursor}`, { 'x-user': 'ben' }, ctrl.signal).catch(() => null))
    await sleep(150)
    const third = await poll('/realtime/poll?topics=projects', { 'x-user': 'ben' })
    expect(third.status).toBe(429)
    ctrl.abort()
    await Promise.all(held)
  })
})

test('a poller that goes away: its tab keeps what arrives for a while, then is gone with its subscriptions, session and timers', async () => {
  await start({ pollHoldMs: 400 })
  const first = await poll('/realtime/poll?topics=a,b')
  const ctrl = new AbortController()
  const gone = poll(after(first, 'a,b'), {}, ctrl.signal).catch(() => 'aborted')
  await sleep(100)
  expect(rt.stats()).toMatchObject({ transports: { poll: 1 }, subscriptions: 2 })
  ctrl.abort()
  expect(await gone).toBe('aborted')
  for (let n = 0; n < 3; n++) await rt.publish('a', 'n', { n })
  // Back within the idle time: nothing was taken by the abandoned poll, all of it comes now.
  const back = await poll(after(first, 'a,b'))
  expect(events(back).map((e) => (e.data as { n: number }).n)).toEqual([0, 1, 2])
  await sleep(600) // past the idle time (the hold limit here) without a poll
  expect(rt.stats()).toMatchObject({ transports: { poll: 0 }, subscriptions: 0, topics: 0 })
  // Nothing is kept for it any more: the next poll catches up from history, exactly where it stopped.
  for (let n = 3; n < 5; n++) await rt.publish('a', 'n', { n })
  const r = await poll(after(back, 'a,b'))
  expect(events(r).map((e) => (e.data as { n: number }).n)).toEqual([3, 4])
})

test('close() answers every held poll with closed 1001, so the client reads config and polls elsewhere', async () => {
  await start()
  const cursor = (await poll('/realtime/poll?topics=a')).body.cursor
  const held = poll(`/realtime/poll?topics=a&since=${cursor}`)
  await sleep(100)
  await rt.close()
  expect((await held).body.frames).toEqual([{ op: 'closed', code: 1001, reason: 'server shutting down' }])
})

test('switching the channel off answers held polls with closed 4000', async () => {
  await start()
  const cursor = (await poll('/realtime/poll?topics=a')).body.cursor
  const held = poll(`/realtime/poll?topics=a&since=${cursor}`)
  await sleep(100)
  rt.webSocketEnabled = false
  expect((await held).body.frames[0]).toMatchObject({ op: 'closed', code: 4000 })
  expect((await poll('/realtime/poll?topics=a')).status).toBe(503)
})

test('a token-signed-in poller gets the next ticket with each answer: no round trip per poll, each ticket once', async () => {
  await start({ authenticate: (req: IncomingMessage) => (req.headers.authorization === 'Bearer good' ? { id: 'anna' } : null), pollHoldMs: 200 })
  const t = (await (await fetch(`${srv.base}/realtime/ticket`, { method: 'POST', headers: { Authorization: 'Bearer good' } })).json()) as { ticket: string }
  const first = await poll(`/realtime/poll?topics=a&ticket=${t.ticket}`)
  expect(first.status).toBe(200)
  expect(typeof first.body.ticket).toBe('string')
  const second = await poll(`/realtime/poll?topics=a&since=${first.body.cursor}&ticket=${first.body.ticket!}`)
  expect(second.status).toBe(200)
  expect(second.body.ticket).not.toBe(first.body.ticket)
  // A ticket is spent once used.
  expect((await poll(`/realtime/poll?topics=a&ticket=${first.body.ticket!}`)).status).toBe(401)
  // A cookie (or header) poller gets no ticket.
  expect((await poll('/realtime/poll?topics=a', { Authorization: 'Bearer good' })).body.ticket).toBeUndefined()
})

test('an HTTP/1.0 client (an old proxy hop) gets a whole answer with Content-Length, then the connection closes', async () => {
  await start()
  const r = await rawRequest(srv.port, `GET /realtime/poll?topics=a HTTP/1.0\nHost: 127.0.0.1:${srv.port}`)
  expect(r.status).toBe(200)
  expect(r.headers['transfer-encoding']).toBeUndefined()
  expect(r.headers['content-length']).toBe(String(Buffer.byteLength(r.body)))
  expect(JSON.parse(r.body)).toMatchObject({ frames: [{ op: 'subscribed', topic: 'a' }] })
  expect(r.closed).toBe(true)
})

describe('one origin policy: the poll is read like the stream', () => {
  test('a cross-origin page cannot read a poll; an allowed origin gets our own CORS answer; requireOrigin applies', async () => {
    await start({ allowedOrigins: ['http://admin.example'] })
    const evil = await poll('/realtime/poll?topics=a', { Origin: 'http://evil.example' })
    expect(evil.status).toBe(403)
    expect(evil.body.error).toBe('origin')
    expect(evil.headers['access-control-allow-origin']).toBeUndefined()
    const admin = await poll('/realtime/poll?topics=a', { Origin: 'http://admin.example' })
    expect(admin.status).toBe(200)
    expect(admin.headers['access-control-allow-origin']).toBe('http://admin.example')
    expect(admin.headers['access-control-allow-credentials']).toBe('true')
    await rt.close()
    await srv.close()
    await start({ requireOrigin: true })
    expect((await poll('/realtime/poll?topics=a')).status).toBe(403)
    expect(rt.stats()).toMatchObject({ refusals: { origin: 1 }, subscriptions: 0 })
  })
})
