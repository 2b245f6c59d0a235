/**
 * Defect 3 of issue #8: nobody keeps receiving after losing access. Each test
 * ends a session or a subscription on a live WebSocket and a live SSE stream,
 * then publishes and counts what still arrives (must be nothing), and how long
 * the door took to close.
 */
import type { IncomingMessage } from 'node:http'
import { CloseCode } from '../../lib/protocol/protocol'
import { fixture, type Fixture } from '../helpers/fixture'
import { connect, handshake, rawRequest, type TestClient } from '../helpers/net'
import { openStream, type Stream } from '../helpers/sse'

let f: Fixture
const streams: Stream[] = []
afterEach(async () => {
  for (const s of streams.splice(0)) s.close()
  await f.close()
})

/** Users from an `x-user` header; `members` decides who may read `project:*`. */
function cms(members = new Set(['anna', 'ben']), extra: Record<string, unknown> = {}) {
  return fixture({
    authenticate: (req: IncomingMessage) => {
      const id = req.headers['x-user']
      return typeof id === 'string' ? { id } : null
    },
    authorize: (user, topic) => !topic.startsWith('project:') || members.has((user as { id: string }).id),
    ...extra,
  })
}

const as = (user: string) => ({ headers: { 'x-user': user } })

async function sse(user: string, topics: string): Promise<Stream> {
  const s = await openStream(`${f.srv.base}/realtime/events?topics=${topics}`, { 'x-user': user })
  streams.push(s)
  await s.until((x) => x.frames().filter((fr) => fr.op === 'subscribed').length === topics.split(',').length, 'subscribed')
  return s
}

const eventsOf = (c: TestClient | Stream, topic: string) =>
  ('frames' in c && typeof c.frames === 'function' ? c.frames() : (c as TestClient).frames)
    .filter((fr) => fr.op === 'event' && fr.topic === topic)

/** Publish, then give delivery time to happen (a received event would be seen by then). */
async function publishAndSettle(topic: string, n = 3): Promise<void> {
  for (let i = 0; i < n; i++) await f.rt.publish(topic, 'item-updated', { i })
  await new Promise((r) => setTimeout(r, 150))
}

describe('rt.disconnect', () => {
  test('ends every WebSocket and SSE stream of one user at once (4401 / closed frame); nothing reaches them after; others keep receiving', async () => {
    f = await cms()
    const anna1 = await f.connect(as('anna'))
    const anna2 = await f.connect(as('anna'))
    const ben = await f.connect(as('ben'))
    for (const c of [anna1, anna2, ben]) await c.subscribe('project:1')
    const annaSse = await sse('anna', 'project:1,projects')
    const t0 = performance.now()
    expect(f.rt.disconnect({ user: 'anna' }, 'signed out')).toBe(3)
    expect(await anna1.closed()).toBe(CloseCode.SESSION_ENDED)
    expect(await anna2.closed()).toBe(CloseCode.SESSION_ENDED)
    await annaSse.until((s) => s.ended, 'the SSE stream to end')
    const ms = performance.now() - t0
    expect(ms).toBeLessThan(1000)
    expect(annaSse.frames().at(-1)).toEqual({ op: 'closed', code: 4401, reason: 'signed out' })
    await publishAndSettle('project:1')
    expect(eventsOf(anna1, 'project:1')).toHaveLength(0)
    expect(eventsOf(annaSse, 'project:1')).toHaveLength(0)
    expect(eventsOf(ben, 'project:1')).toHaveLength(3)
    expect(f.rt.stats()).toMatchObject({ connections: 1, fallbackStreams: 0, subscriptions: 1, sessionsEnded: 3 })
  })

  test('a predicate selects by user; a selector of nobody ends nothing', async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    const ben = await f.connect(as('ben'))
    expect(f.rt.disconnect({ user: 'carl' })).toBe(0)
    expect(f.rt.disconnect((u) => (u as { id: string }).id === 'ben')).toBe(1)
    expect(await ben.closed()).toBe(4401)
    anna.send({ op: 'ping' })
    expect(await anna.op('pong')).toEqual({ op: 'pong' })
  })

  test('a frame queued in a paced burst is not sent after the disconnect', async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    await anna.subscribe('project:1')
    // A burst large enough to be delivered over several slices.
    for (let i = 0; i < 5000; i++) void f.rt.publish('project:1', 'bulk', { i })
    f.rt.disconnect({ user: 'anna' })
    const delivered = eventsOf(anna, 'project:1').length
    expect(await anna.closed()).toBe(4401)
    expect(eventsOf(anna, 'project:1').length).toBeLessThanOrEqual(delivered + 1) // at most the write already in the kernel
  })
})

describe('rt.reauthorize', () => {
  test('drops a topic the user lost, on WebSocket and SSE, with unsubscribed/forbidden; other topics continue', async () => {
    const members = new Set(['anna', 'ben'])
    f = await cms(members)
    const anna = await f.connect(as('anna'))
    await anna.subscribe('project:1')
    await anna.subscribe('projects')
    const annaSse = await sse('anna', 'project:1,projects')
    const ben = await f.connect(as('ben'))
    await ben.subscribe('project:1')

    members.delete('anna')
    const t0 = performance.now()
    expect(await f.rt.reauthorize({ topic: 'project:1' })).toBe(2)
    expect(performance.now() - t0).toBeLessThan(1000)
    expect(await anna.op('unsubscribed')).toEqual({ op: 'unsubscribed', topic: 'project:1', reason: 'forbidden' })
    await annaSse.until((s) => s.frames().some((fr) => fr.op === 'unsubscribed'), 'unsubscribed on SSE')
    expect(annaSse.frames().find((fr) => fr.op === 'unsubscribed')).toEqual({ op: 'unsubscribed', topic: 'project:1', reason: 'forbidden' })

    await publishAndSettle('project:1')
    await publishAndSettle('projects', 1)
    expect(eventsOf(anna, 'project:1')).toHaveLength(0)
    expect(eventsOf(annaSse, 'project:1')).toHaveLength(0)
    expect(eventsOf(ben, 'project:1')).toHaveLength(3)
    expect(eventsOf(anna, 'projects')).toHaveLength(1)
    expect(eventsOf(annaSse, 'projects')).toHaveLength(1)
    expect(f.rt.stats().subscriptionsRevoked).toBe(2)
  })

  test('a subscribe whose authorize was in flight during the reauthorize is dropped too', async () => {
    const members = new Set(['anna'])
    let release: () => void = () => {}
    const slow = new Promise<void>((r) => { release = r })
    let calls = 0
    f = await fixture({
      authenticate: () => ({ id: 'anna' }),
      authorize: async (user, topic) => {
        if (++calls === 1) await slow // the first answer is computed before access is withdrawn
        return members.has((user as { id: string }).id) || !topic.startsWith('project:')
      },
    })
    const anna = await f.connect()
    anna.send({ op: 'subscribe', topic: 'project:1' })
    while (calls === 0) await new Promise((r) => setTimeout(r, 5))
    members.delete('anna')
    await f.rt.reauthorize({ user: 'anna' })
    release()
    expect(await anna.next((fr) => fr.topic === 'project:1')).toEqual({ op: 'unsubscribed', topic: 'project:1', reason: 'forbidden' })
    await publishAndSettle('project:1', 1)
    expect(eventsOf(anna, 'project:1')).toHaveLength(0)
  })

  test('an authorize that throws during reauthorize counts as a refusal', async () => {
    let broken = false
    f = await fixture({ authorize: () => { if (broken) throw new Error('db down'); return true } })
    const c = await f.connect()
    await c.subscribe('projects')
    broken = true
    expect(await f.rt.reauthorize()).toBe(1)
    expect(await c.op('unsubscribed')).toMatchObject({ reason: 'forbidden' })
    expect(f.rt.stats().errors).toBe(1)
  })
})

describe('session expiry', () => {
  test('revalidate returning false ends the session within one interval; a throw keeps it and is counted', async () => {
    const valid = new Map([['anna', true], ['ben', true]])
    let throwFor = ''
    f = await cms(undefined, {
      revalidateMs: 100,
      revalidate: (u: unknown) => {
        const id = (u as { id: string }).id
        if (id === throwFor) throw new Error('session store down')
        return valid.get(id) === true
      },
    })
    const anna = await f.connect(as('anna'))
    const ben = await f.connect(as('ben'))
    await anna.subscribe('projects')
    const annaSse = await sse('anna', 'projects')
    throwFor = 'ben'
    valid.set('anna', false)
    const t0 = performance.now()
    expect(await anna.closed(2000)).toBe(4401)
    await annaSse.until((s) => s.ended, 'the SSE stream to end', 2000)
    expect(performance.now() - t0).toBeLessThan(500)
    expect(annaSse.frames().at(-1)).toMatchObject({ op: 'closed', code: 4401 })
    await new Promise((r) => setTimeout(r, 250))
    ben.send({ op: 'ping' })
    expect(await ben.op('pong')).toEqual({ op: 'pong' })
    expect(f.rt.stats().errors).toBeGreaterThanOrEqual(1)
  })

  test('revalidate is asked per session: one user signed in on two devices, signed out of one, keeps the other', async () => {
    const active = new Set(['laptop', 'phone'])
    const asked: string[] = []
    f = await fixture({
      authenticate: (req: unknown) => ({ id: 'anna', sessionId: String((req as IncomingMessage).headers['x-session']) }),
      revalidateMs: 100,
      revalidate: (u: unknown) => {
        const session = (u as { sessionId: string }).sessionId
        asked.push(session)
        return active.has(session)
      },
    })
    const laptop = await f.connect({ headers: { 'x-session': 'laptop' } })
    const laptopTab2 = await f.connect({ headers: { 'x-session': 'laptop' } })
    const phone = await f.connect({ headers: { 'x-session': 'phone' } })
    active.delete('phone') // signed out on the phone
    expect(await phone.closed(2000)).toBe(4401)
    await new Promise((r) => setTimeout(r, 250))
    for (const c of [laptop, laptopTab2]) {
      c.send({ op: 'ping' })
      expect(await c.op('pong')).toEqual({ op: 'pong' })
    }
    expect(asked).toContain('laptop')
  })

  test('a user whose expiresAt passes is disconnected then; one already expired is refused 401', async () => {
    let expiresAt = Date.now() + 300
    f = await fixture({ authenticate: () => ({ id: 'anna', expiresAt }) })
    const c = await f.connect()
    const t0 = Date.now()
    expect(await c.closed(2000)).toBe(4401)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(200)
    expiresAt = Date.now() - 1
    await expect(connect(f.srv.port)).rejects.toMatchObject({ status: 401 })
    const r = await fetch(`${f.srv.base}/realtime/events?topics=projects`)
    expect(r.status).toBe(401)
  })
})

describe('maxConnectionsPerUser', () => {
  test('counts WebSockets and SSE streams together; past it → 429 too_many_connections; a closed one frees a place', async () => {
    f = await cms(undefined, { maxConnectionsPerUser: 2 })
    const a1 = await f.connect(as('anna'))
    await sse('anna', 'projects')
    await expect(connect(f.srv.port, as('anna'))).rejects.toMatchObject({ status: 429 })
    const r = await fetch(`${f.srv.base}/realtime/events?topics=projects`, as('anna'))
    expect(r.status).toBe(429)
    expect(((await r.json()) as { error: string }).error).toBe('too_many_connections')
    await f.connect(as('ben')) // another user is not affected
    a1.close()
    for (let i = 0; i < 100 && f.rt.stats().connections > 1; i++) await new Promise((res) => setTimeout(res, 10))
    await f.connect(as('anna'))
    expect(f.rt.stats().refusals.too_many_connections).toBe(2)
  })
})

describe('maxConnections (the whole process)', () => {
  test('counts every user and transport; past it → 503 over_capacity with a jittered Retry-After; a closed one frees a place', async () => {
    f = await cms(undefined, { maxConnections: 2 })
    const a1 = await f.connect(as('anna'))
    await sse('ben', 'projects')
    const refused = await rawRequest(f.srv.port, handshake(f.srv.port, '/realtime', { 'x-user': 'carl' }), 1000)
    expect(refused.status).toBe(503)
    expect(JSON.parse(refused.body)).toMatchObject({ error: 'over_capacity' })
    const after = Number(refused.headers['retry-after'])
    expect(after).toBeGreaterThanOrEqual(5)
    expect(after).toBeLessThanOrEqual(10)
    const r = await fetch(`${f.srv.base}/realtime/events?topics=projects`, as('dora'))
    expect(r.status).toBe(503)
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(5)
    expect(((await r.json()) as { error: string }).error).toBe('over_capacity')
    // Jittered: many refusals do not all name the same second.
    const waits = new Set<string>()
    for (let i = 0; i < 20; i++) waits.add((await fetch(`${f.srv.base}/realtime/events?topics=projects`, as('dora'))).headers.get('retry-after')!)
    expect(waits.size).toBeGreaterThan(1)
    a1.close()
    for (let i = 0; i < 100 && f.rt.stats().connections > 0; i++) await new Promise((res) => setTimeout(res, 10))
    await f.connect(as('carl'))
    expect(f.rt.stats().refusals.over_capacity).toBe(22)
  })
})
