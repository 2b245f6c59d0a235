/**
 * The SSE fallback on the wire (raw HTTP, no EventSource): bad input gets a
 * clear 4xx and leaks nothing; a stream carries the WebSocket's frames with
 * the cursor vector as `id`, resumes from `Last-Event-ID` or `?since=`,
 * sends heartbeat comments, and leaves the hub when either side closes it.
 */
import { request, type IncomingMessage } from 'node:http'
import { createRealtime, type Realtime } from '../lib/server/realtime'
import { MemoryBus } from '../lib/bus/memory'
import type { RealtimeOptions } from '../lib/types'
import { encodeCursors } from '../lib/client/cursor-vector'
import { listen, type Listening } from './helpers/net'
import { openStream, type Stream } from './helpers/sse'

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

function open(path: string, headers: Record<string, string> = {}): Promise<Stream> {
  return openStream(`${srv.base}${path}`, headers)
}

async function fetchJson(path: string, init: { method?: string; headers?: Record<string, string> } = {}) {
  const r = await fetch(`${srv.base}${path}`, init)
  return { status: r.status, headers: r.headers, body: (await r.json()) as { error: string; reason: string } }
}

describe('bad requests get a clear 4xx and leave nothing behind', () => {
  const options = {
    authenticate: (req: IncomingMessage) => (req.headers['x-user'] === undefined ? null : { id: String(req.headers['x-user']) }),
    maxTopicsPerConnection: 3,
  }
  test.each([
    ['no topics', 400, 'bad_topics', '/realtime/events', {}],
    ['an empty topic list', 400, 'bad_topics', '/realtime/events?topics=', {}],
    ['an empty topic in the list', 400, 'bad_topics', '/realtime/events?topics=a,,b', {}],
    ['a topic with a space', 400, 'bad_topics', '/realtime/events?topics=a%20b', {}],
    ['a topic listed twice', 400, 'bad_topics', '/realtime/events?topics=a,a', {}],
    ['too many topics', 400, 'too_many_topics', '/realtime/events?topics=a,b,c,d', {}],
    ['a since vector of the wrong length', 400, 'bad_cursor', '/realtime/events?topics=a,b&since=x', {}],
    ['a since cursor with bad percent-encoding', 400, 'bad_cursor', '/realtime/events?topics=a&since=%25zz', {}],
    ['a Last-Event-ID of the wrong length', 400, 'bad_cursor', '/realtime/events?topics=a', { 'Last-Event-ID': 'x,y' }],
    ['a cursor over 64 characters', 400, 'bad_cursor', `/realtime/events?topics=a&since=${'x'.repeat(65)}`, {}],
    ['no user', 401, 'unauthenticated', '/realtime/events?topics=a', { 'x-anon': '1' }],
    ["another user's notifications", 403, 'forbidden', '/realtime/events?topics=projects,notifications:bob', {}],
  ] as const)('%s → %i %s', async (_t, status, error, path, headers) => {
    await start(options)
    const h: Record<string, string> = { ...headers }
    if (h['x-anon'] === undefined) h['x-user'] = 'anna'
    const r = await fetchJson(path, { headers: h })
    expect(r.status).toBe(status)
    expect(r.body.error).toBe(error)
    expect(r.headers.get('cache-control')).toBe('no-store')
    if (error === 'forbidden') expect(r.body.reason).toContain('notifications:bob')
    expect(rt.stats()).toMatchObject({ fallbackStreams: 0, subscriptions: 0, topics: 0 })
  })

  test('a POST gets 405 naming GET', async () => {
    await start()
    const r = await fetchJson('/realtime/events?topics=a', { method: 'POST' })
    expect(r.status).toBe(405)
    expect(r.headers.get('allow')).toBe('GET, HEAD')
  })

  test('with fallback "none" there is no event stream', async () => {
    await start({ fallback: 'none' })
    expect((await fetchJson('/realtime/events?topics=a')).status).toBe(404)
  })
})

test('a stream says subscribed with a cursor, then carries events as WebSocket frames with the cursor vector as id', async () => {
  await start()
  const s = await open('/realtime/events?topics=projects,project:1')
  expect(s.res.statusCode).toBe(200)
  expect(s.res.headers['content-type']).toBe('text/event-stream; charset=utf-8')
  expect(s.res.headers['x-accel-buffering']).toBe('no')
  await s.until((x) => x.frames().length === 2, 'two subscribed frames')
  expect(s.messages[0]).toEqual({ retry: '2000' })
  const [a, b] = s.frames()
  expect(a).toMatchObject({ op: 'subscribed', topic: 'projects' })
  expect(b).toMatchObject({ op: 'subscribed', topic: 'project:1' })
  expect(rt.stats()).toMatchObject({ fallbackStreams: 1, subscriptions: 2 })
  const p = await rt.publish('project:1', 'item-added', { id: 7 })
  await s.until((x) => x.frames().length === 3, 'the event')
  expect(s.frames()[2]).toEqual({ op: 'event', topic: 'project:1', id: p.id, type: 'item-added', data: { id: 7 } })
  expect(s.messages.at(-1)!.id).toBe(encodeCursors([a!.cursor as string, p.id]))
  s.close()
  await new Promise((r) => setTimeout(r, 50))
  expect(rt.stats()).toMatchObject({ fallbackStreams: 0, subscriptions: 0 })
})

test('a stream reopened with Last-Event-ID replays exactly what was missed; it wins over ?since=', async () => {
  await start()
  const s = await open('/realtime/events?topics=a,b')
  await s.until((x) => x.frames().length === 2, 'subscribed')
  await rt.publish('a', 'e', 1)
  await s.until((x) => x.frames().length === 3, 'one event')
  const lastId = s.messages.at(-1)!.id!
  s.close()
  await rt.publish('b', 'e', 2)
  await rt.publish('a', 'e', 3)
  const stale = encodeCursors(['nope-1', 'nope-1'])
  const t = await open(`/realtime/events?topics=a,b&since=${encodeURIComponent(stale)}`, { 'Last-Event-ID': lastId })
  await t.until((x) => x.frames().length === 4, 'recovered frames')
  expect(t.frames().map((f) => [f.op, f.topic, f.data])).toEqual([
    ['subscribed', 'a', undefined], ['event', 'a', 3], ['subscribed', 'b', undefined], ['event', 'b', 2],
  ])
  expect(t.frames().filter((f) => f.op === 'subscribed').every((f) => f.recovered === true)).toBe(true)
  t.close()
})

test('?since= resumes a client coming from the WebSocket; an unknown cursor gets resync and a fresh cursor', async () => {
  await start()
  const first = await rt.publish('a', 'e', 1)
  await rt.publish('a', 'e', 2)
  const s = await open(`/realtime/events?topics=a,b&since=${encodeURIComponent(encodeCursors([first.id, 'other-epoch-9']))}`)
  await s.until((x) => x.frames().length === 4, 'frames')
  const f = s.frames()
  expect(f[0]).toMatchObject({ op: 'subscribed', topic: 'a', recovered: true })
  expect(f[1]).toMatchObject({ op: 'event', topic: 'a', data: 2 })
  expect(f[2]).toEqual({ op: 'resync', topic: 'b' })
  expect(f[3]).toMatchObject({ op: 'subscribed', topic: 'b', recovered: false })
  expect(typeof f[3]!.cursor).toBe('string')
  s.close()
})

test('a stream that joins while a burst is still queued for delivery gets each event once, in order', async () => {
  let admit: (ok: boolean) => void = () => {}
  const gate = new Promise<boolean>((resolve) => { admit = resolve })
  let calls = 0
  await start({ bus: new MemoryBus({ historySize: 5000 }), authorize: () => (++calls === 1 ? true : gate) })
  const other = await open('/realtime/events?topics=a') // a subscriber, so the burst queues up
  await other.until((x) => x.frames().length === 1, 'subscribed')
  const first = await rt.publish('a', 'e', 0)
  const opening = open(`/realtime/events?topics=a&since=${encodeURIComponent(first.id)}`) // headers come after authorize
  while (calls < 2) await new Promise((r) => setTimeout(r, 5))
  for (let i = 1; i <= 3000; i++) void rt.publish('a', 'e', i)
  admit(true) // joins now, with most of the burst in history and still queued
  const late = await opening
  await late.until((x) => x.frames().filter((f) => f.op === 'event').length >= 3000, 'the burst', 10_000)
  await new Promise((r) => setTimeout(r, 100))
  expect(late.frames().filter((f) => f.op === 'event').map((f) => f.data)).toEqual(Array.from({ length: 3000 }, (_x, i) => i + 1))
  other.close()
  late.close()
})

test('a stream breathes in data the browser sees: a first frame at once, then a heartbeat each interval, never moving Last-Event-ID', async () => {
  await start({ heartbeatMs: 60 })
  const s = await open('/realtime/events?topics=a')
  // Before anything else that needs a history read: a proxy that holds the stream holds this too.
  await s.until((x) => x.messages.length >= 2, 'the first frames')
  expect(s.messages[0]).toEqual({ retry: '2000' })
  expect(JSON.parse(s.messages[1]!.data!)).toEqual({ op: 'pong', session: expect.stringMatching(/^[\w-]{24}$/) })
  await s.until((x) => x.beats().length >= 3, 'two more heartbeats')
  // EventSource hides comments, so a heartbeat must be a message; with no id, the browser's Last-Event-ID stays.
  expect(s.beats().every((m) => m.id === undefined)).toBe(true)
  s.close()
})

test('close() ends every stream so browsers reconnect elsewhere', async () => {
  await start()
  const s = await open('/realtime/events?topics=a')
  await s.until((x) => x.frames().length === 1, 'subscribed')
  await rt.close()
  await s.until((x) => x.ended, 'the end of the stream')
})

test('HEAD answers the stream headers and ends', async () => {
  await start()
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    request(`${srv.base}/realtime/events?topics=a`, { method: 'HEAD' }, resolve).on('error', reject).end()
  })
  expect(res.statusCode).toBe(200)
  expect(res.headers['content-type']).toMatch(/^text\/event-stream/)
  res.resume()
  await new Promise((r) => res.on('end', r))
  expect(rt.stats().fallbackStreams).toBe(0)
})
