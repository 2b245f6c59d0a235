/**
 * Presence and locks on every transport (#17): anna's tab on SSE, ben's on
 * long polling, carl's on the WebSocket, against one real server. They see
 * each other, take, refuse and take over locks (the holder told at once,
 * whatever it rides), leave at once on the page's farewell, and lose what
 * they hold the moment access is withdrawn. POST <path>/collab refuses bad
 * input clearly and lets no page act as another user's tab.
 */
import type { IncomingMessage } from 'node:http'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import type { Presence, RealtimeClient } from '../../lib/client'
import { Cleanup } from '../helpers/net'
import { browserFetch, client, startApp, waitFor, sleep, type App } from '../client/helpers'
import { openStream } from '../helpers/sse'

const cleanup = new Cleanup()
afterEach(() => cleanup.run())

const members = new Set(['anna', 'ben', 'carl'])

async function app(): Promise<App> {
  const a = await startApp({
    authenticate: (req: IncomingMessage) => (typeof req.headers['x-user'] === 'string' ? { id: req.headers['x-user'] } : null),
    authorize: (user, topic) => !topic.startsWith('project:') || members.has((user as { id: string }).id),
    collab: { leaveGraceMs: 300, lockGraceMs: 800, leaseMs: 3000 },
  })
  cleanup.add(() => a.srv.close())
  cleanup.add(() => a.rt.close())
  return a
}

/** What a browser's cookie does for the real thing: every request of this editor says who it is. */
function as(user: string, a: App) {
  const f = browserFetch(a.srv.base)
  return {
    fetch: ((url, init = {}) => f(url, { ...init, headers: { ...init.headers, 'x-user': user } })) as typeof f,
    EventSource: class extends EventSource {
      constructor(url: string | URL) {
        super(url, { fetch: (input, init) => fetch(input, { ...init, headers: { ...init?.headers, 'x-user': user } }) })
      }
    },
    WebSocket: class extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols, { headers: { 'x-user': user } })
      }
    },
  }
}

/** anna on SSE (no WebSocket in her browser), ben on long polling (no EventSource either), carl on the WebSocket. */
async function editors(a: App): Promise<{ anna: RealtimeClient; ben: RealtimeClient; carl: RealtimeClient }> {
  const anna = client(a.srv.base, { ...as('anna', a), WebSocket: undefined, share: false })
  const ben = client(a.srv.base, { ...as('ben', a), WebSocket: undefined, EventSource: null, share: false })
  const carl = client(a.srv.base, { ...as('carl', a), share: false })
  for (const c of [anna, ben, carl]) cleanup.add(() => c.close())
  for (const c of [anna, ben, carl]) c.subscribe('projects', () => undefined)
  await waitFor(() => anna.transport === 'sse' && ben.transport === 'poll' && carl.transport === 'websocket', 'each on its transport')
  return { anna, ben, carl }
}

const users = (p: Presence) => p.members.map((m) => m.user).sort().join()

test('presence across SSE, long polling and the WebSocket: each sees the others and their updates', async () => {
  const a = await app()
  const { anna, ben, carl } = await editors(a)
  const [pa, pb, pc] = [anna, ben, carl].map((c) => c.presence('project:1/item:1', { field: null }))
  await waitFor(() => [pa, pb, pc].every((p) => users(p!) === 'anna,ben,carl'), 'all three present everywhere')
  expect(pb!.you).toBe('ben')
  pb!.update({ field: 'title' })
  await waitFor(() => pa!.members.some((m) => m.user === 'ben' && (m.meta as { field: string }).field === 'title')
    && pc!.members.some((m) => m.user === 'ben' && (m.meta as { field: string }).field === 'title'), "ben's update seen on SSE and WebSocket")
  pa!.leave()
  await waitFor(() => users(pb!) === 'ben,carl' && users(pc!) === 'ben,carl', 'anna left at once')
})

test('locks across transports: the poller holds, the SSE tab is refused with the holder, the WebSocket takes over and the poller is told at once', async () => {
  const a = await app()
  const { anna, ben, carl } = await editors(a)
  const held = await ben.lock('project:1/item:2')
  if (!held.held) throw new Error('ben should hold the lock')
  const lost: Array<{ at: number; by: unknown }> = []
  held.on('lost', (e) => lost.push({ at: Date.now(), by: e.by }))
  expect(await anna.lock('project:1/item:2')).toMatchObject({ held: false, holder: { user: 'ben' } })
  const took = await carl.lock('project:1/item:2', { takeover: true })
  expect(took.held).toBe(true)
  const t0 = Date.now()
  await waitFor(() => lost.length === 1, 'ben told of the takeover')
  expect(lost[0]!.at - t0).toBeLessThan(1000)
  expect(lost[0]!.by).toMatchObject({ user: 'carl' })
  if (took.held) took.release()
  await sleep(100)
  const mine = await anna.lock('project:1/item:2')
  expect(mine.held).toBe(true)
})

test("a polling tab's page leaving (close/pagehide) leaves presence and frees its lock at once, not after the grace", async () => {
  const a = await app()
  const { anna, ben } = await editors(a)
  const pa = anna.presence('project:1/item:3')
  ben.presence('project:1/item:3')
  expect((await ben.lock('project:1/item:3')).held).toBe(true)
  await waitFor(() => users(pa) === 'anna,ben' && pa.lock?.user === 'ben', 'ben present, holding')
  const t0 = Date.now()
  ben.close()
  await waitFor(() => users(pa) === 'anna' && pa.lock === null, 'ben gone')
  expect(Date.now() - t0).toBeLessThan(300) // under the 300 ms leave grace: the farewell did it
})

test("withdrawn access reaches a polling tab's presence and lock between polls too: gone for the others, the tab told", async () => {
  const a = await app()
  const { anna, ben } = await editors(a)
  const pa = anna.presence('project:1/item:4')
  const pb = ben.presence('project:1/item:4')
  expect((await ben.lock('project:1/item:4')).held).toBe(true)
  await waitFor(() => users(pa) === 'anna,ben' && pa.lock?.user === 'ben', 'ben present, holding')
  const errors: string[] = []
  ben.on('error', (e) => errors.push(`${e.code} ${e.topic}`))
  members.delete('ben')
  try {
    await a.rt.reauthorize({ topic: 'project:1' })
    await waitFor(() => users(pa) === 'anna' && pa.lock === null, 'ben out of presence and the lock free')
    await waitFor(() => errors.includes('forbidden project:1/item:4'), 'ben told')
    expect(pb.members).toEqual([])
  } finally {
    members.add('ben')
  }
})

describe('POST <path>/collab refuses what it must, clearly', () => {
  async function stream(a: App, user: string): Promise<string> {
    const s = await openStream(`${a.srv.base}/realtime/events?topics=projects`, { 'x-user': user })
    cleanup.add(() => s.close())
    await s.until((x) => x.session() !== undefined, 'the session')
    return s.session()!
  }
  const post = (a: App, session: string, body: string, headers: Record<string, string> = {}) =>
    fetch(`${a.srv.base}/realtime/collab?session=${session}`, { method: 'POST', body, headers: { Origin: a.srv.base, 'x-user': 'anna', ...headers } })
      .then(async (r) => ({ status: r.status, body: r.status === 202 ? null : ((await r.json()) as { error: string }) }))
  const presence = JSON.stringify({ op: 'presence', topic: 'project:1/item:9', tab: 'tab-aaaaaaaaaaaa' })

  test.each([
    ['no Origin (not a browser page)', 403, 'origin_required', null, 'anna', presence],
    ['a foreign Origin', 403, 'origin', 'http://evil.example', 'anna', presence],
    ['no user', 401, 'unauthenticated', 'self', null, presence],
    ["another user's session", 403, 'forbidden', 'self', 'ben', presence],
    ['not JSON', 400, 'bad_request', 'self', 'anna', '{'],
    ['a subscribe (not a presence or lock frame)', 400, 'unknown_op', 'self', 'anna', JSON.stringify({ op: 'subscribe', topic: 'a' })],
    ['a body over 16 KiB', 413, 'too_large', 'self', 'anna', JSON.stringify({ op: 'presence', topic: 'a', tab: 'tab-aaaaaaaaaaaa', meta: 'x'.repeat(17_000) })],
  ] as const)('%s → %i %s', async (_t, status, error, origin, user, body) => {
    const a = await app()
    const session = await stream(a, 'anna')
    const headers: Record<string, string> = {}
    if (origin !== null) headers.Origin = origin === 'self' ? a.srv.base : origin
    if (user !== null) headers['x-user'] = user
    const r = await fetch(`${a.srv.base}/realtime/collab?session=${session}`, { method: 'POST', body, headers })
    expect(r.status).toBe(status)
    expect(((await r.json()) as { error: string }).error).toBe(error)
  })

  test('an unknown session is a 404 (the transport announces a new one); GET is a 405; a flood is rate-limited', async () => {
    const a = await app()
    expect((await post(a, 'nope', presence)).body?.error).toBe('no_session')
    const session = await stream(a, 'anna')
    expect((await fetch(`${a.srv.base}/realtime/collab?session=${session}`, { headers: { 'x-user': 'anna' } })).status).toBe(405)
    // 50 a second (maxMessagesPerSecond), in one-second windows: 120 at once straddle at most one boundary.
    const answers = await Promise.all(Array.from({ length: 120 }, () => post(a, session, presence)))
    const ok = answers.filter((r) => r.status === 202).length
    expect(ok).toBeGreaterThanOrEqual(50)
    expect(ok).toBeLessThanOrEqual(100)
    expect(answers.filter((r) => r.status === 429).length).toBe(120 - ok)
  })
})

test('a polling tab takes over from an SSE tab: it holds, the SSE tab is told', async () => {
  const a = await app()
  const { anna, ben } = await editors(a)
  const held = await anna.lock('project:1/item:5')
  if (!held.held) throw new Error('anna should hold the lock')
  const lost: unknown[] = []
  held.on('lost', (e) => lost.push(e.by))
  expect(await ben.lock('project:1/item:5')).toMatchObject({ held: false, holder: { user: 'anna' } })
  const took = await ben.lock('project:1/item:5', { takeover: true })
  expect(took.held).toBe(true)
  await waitFor(() => lost.length === 1, 'anna told')
})
