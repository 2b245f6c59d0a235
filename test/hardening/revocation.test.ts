/**
 * Hardening round 3 (#18), items 1, 2, 6 and 10: access ends for everything a
 * tab holds, whatever is still in flight when it ends.
 * - A removed editor loses the presence and lock of the project's items,
 *   held on a connection that does not subscribe to the project.
 * - A revocation or logout that lands while the checks of a stream,
 *   subscription, presence or lock are still awaited wins over their verdict.
 * - A tab is told when it loses a lock (`lock-lost`), and an `unlock` of a
 *   lock someone else holds says so (`not_holder`).
 * Each test injects the fault, then counts what still arrives.
 */
import type { IncomingMessage } from 'node:http'
import Koa from 'koa'
import { realtime } from 'cms-realtime/koa'
import { connect, handshake, listen, rawRequest, type Listening } from '../helpers/net'
import { fixture, type Fixture } from '../helpers/fixture'
import type { Frame, TestClient } from '../helpers/net'
import { openStream, type Stream } from '../helpers/sse'

let f: Fixture
const streams: Stream[] = []
afterEach(async () => {
  for (const s of streams.splice(0)) s.close()
  await f?.close()
})

const as = (user: string) => ({ headers: { 'x-user': user } })
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The demo's rule: a project's topic and its items' topics follow membership. */
function cms(members: Set<string>, extra: Record<string, unknown> = {}) {
  return fixture({
    authenticate: (req: IncomingMessage) => {
      const id = req.headers['x-user']
      return typeof id === 'string' ? { id } : null
    },
    authorize: (user, topic) => !topic.startsWith('project:1') || members.has((user as { id: string }).id),
    collab: { leaveGraceMs: 300, lockGraceMs: 500, leaseMs: 3000 },
    ...extra,
  })
}

interface PresenceFrame { members: Array<{ user: string }>; lock: { user: string } | null }
const presence = (c: TestClient, pred: (p: PresenceFrame) => boolean, timeoutMs = 3000) =>
  c.next((fr: Frame) => fr.op === 'presence' && pred(fr as unknown as PresenceFrame), timeoutMs) as unknown as Promise<PresenceFrame>

async function editItem(c: TestClient, topic: string, tab: string): Promise<void> {
  c.send({ op: 'presence', topic, tab, meta: { editing: true } })
  await c.op('present')
  c.send({ op: 'lock', key: topic, tab })
  expect(await c.op('lock')).toMatchObject({ result: 'held' })
}

describe('a removed editor (item 1)', () => {
  test("reauthorize({ topic: 'project:1' }) frees the presence and lock of project:1/item:1, held on a connection not subscribed to project:1", async () => {
    const members = new Set(['anna', 'ben'])
    f = await cms(members)
    const ben = await f.connect(as('ben')) // the item editor's own connection: presence and the lock only
    await editItem(ben, 'project:1/item:1', 'ben-tab-0001')
    const anna = await f.connect(as('anna'))
    anna.send({ op: 'presence', topic: 'project:1/item:1', tab: 'anna-tab-0001', meta: null })
    await presence(anna, (p) => p.members.length === 2 && p.lock?.user === 'ben')

    members.delete('ben')
    const t0 = Date.now()
    expect(await f.rt.reauthorize({ topic: 'project:1' })).toBe(1)
    // Ben's tab is told: out of the presence, and the lock lost (by nobody: the server took it).
    expect(await ben.op('unsubscribed')).toEqual({ op: 'unsubscribed', topic: 'project:1/item:1', reason: 'forbidden' })
    expect(await ben.op('lock-lost')).toEqual({ op: 'lock-lost', key: 'project:1/item:1', by: null })
    // Anna sees him go, and the lock free, at once; she can take it.
    await presence(anna, (p) => p.members.length === 1 && p.lock === null, 1000)
    expect(Date.now() - t0).toBeLessThan(1000)
    expect(await f.rt.locks.holder('project:1/item:1')).toBeNull()
    anna.send({ op: 'lock', key: 'project:1/item:1', tab: 'anna-tab-0001' })
    expect(await anna.op('lock')).toMatchObject({ result: 'held' })
    // He hears nothing more of the item's presence.
    anna.send({ op: 'presence', topic: 'project:1/item:1', tab: 'anna-tab-0001', meta: { editing: true } })
    await presence(anna, (p) => p.lock?.user === 'anna')
    await sleep(100)
    expect(ben.frames.filter((fr) => fr.op === 'presence')).toEqual([])
    expect((await f.rt.presence('project:1/item:1')).map((m) => m.user)).toEqual(['anna'])
  })

  test("a topic selector matches the topic and topics below it only: 'project:1' selects neither 'project:10' nor 'project:1x'", async () => {
    const members = new Set<string>()
    let asked: string[] = []
    f = await fixture({
      authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user']) }),
      authorize: (_user, topic) => {
        asked.push(topic)
        return !members.has(topic)
      },
    })
    const c = await f.connect(as('anna'))
    await c.subscribe('project:10')
    await c.subscribe('project:1x')
    asked = []
    expect(await f.rt.reauthorize({ topic: 'project:1' })).toBe(0)
    expect(asked).toEqual([])
  })
})

describe('revocation races (item 2): a verdict that predates the change lets nothing in', () => {
  /**
   * The first `authorize` of each user and topic takes 300 ms (a cold
   * database lookup) and answers from the state at its start; the ones
   * `reauthorize` makes later are quick, so they land while it is pending.
   */
  function slowCms(members: Set<string>, authMs = 0) {
    const asked = new Set<string>()
    return fixture({
      authenticate: async (req: IncomingMessage) => {
        if (authMs > 0) await sleep(authMs)
        const id = req.headers['x-user']
        return typeof id === 'string' ? { id } : null
      },
      authorize: async (user, topic) => {
        const ok = !topic.startsWith('project:') || members.has((user as { id: string }).id)
        const key = `${(user as { id: string }).id} ${topic}`
        if (!asked.has(key)) {
          asked.add(key)
          await sleep(300)
        }
        return ok
      },
    })
  }

  test('SSE: reauthorize while the stream\'s authorize is pending → 403, and 0 of the later events', async () => {
    const members = new Set(['ben'])
    f = await slowCms(members)
    const opening = openStream(`${f.srv.base}/realtime/events?topics=project:1`, { 'x-user': 'ben' })
    await sleep(100)
    members.delete('ben')
    expect(await f.rt.reauthorize({ topic: 'project:1' })).toBe(1)
    const s = await opening
    streams.push(s)
    expect(s.res.statusCode).toBe(403)
    for (let i = 0; i < 3; i++) await f.rt.publish('project:1', 'item-updated', { i })
    await sleep(200)
    expect(s.frames().filter((fr) => fr.op === 'event')).toHaveLength(0)
    expect(f.rt.stats().fallbackStreams).toBe(0)
  })

  test('SSE and WebSocket: a logout while authenticate is pending ends the connection it admits (401 / 4401), 0 events', async () => {
    f = await slowCms(new Set(['ben']), 300)
    const opening = openStream(`${f.srv.base}/realtime/events?topics=projects`, { 'x-user': 'ben' })
    const socket = f.connect({ ...as('ben'), path: '/realtime?topics=projects' })
    await sleep(100)
    expect(f.rt.disconnect({ user: 'ben' })).toBe(0) // nothing is open yet
    const s = await opening
    streams.push(s)
    expect(s.res.statusCode).toBe(401)
    const ws = await socket
    expect(await ws.closed()).toBe(4401)
    for (let i = 0; i < 3; i++) await f.rt.publish('projects', 'updated', { i })
    await sleep(200)
    expect(s.frames()).toHaveLength(0)
    expect(ws.frames.filter((fr) => fr.op === 'event')).toHaveLength(0)
    expect(f.rt.stats()).toMatchObject({ connections: 0, fallbackStreams: 0 })
  })

  test("the app's own middleware looking the session up (300 ms) when the logout lands: the WebSocket gets 4401, the stream 401, 0 events", async () => {
    // The README's shape: the app's session middleware sets ctx.state.user, authenticate only reads it.
    const app = new Koa()
    app.use(async (ctx, next) => {
      await sleep(300)
      const id = ctx.get('x-user')
      ctx.state.user = id === '' ? null : { id }
      await next()
    })
    const rt = realtime({ authenticate: (ctx) => ctx.state.user as { id: string } | null })
    app.use(rt)
    const srv: Listening = await listen(app.callback() as never)
    rt.attach(srv.server)
    try {
      const opening = openStream(`${srv.base}/realtime/events?topics=projects`, { 'x-user': 'ben' })
      const socket = connect(srv.port, { headers: { 'x-user': 'ben' }, path: '/realtime?topics=projects' })
      await sleep(100)
      expect(rt.disconnect({ user: 'ben' })).toBe(0) // nothing is open yet
      const s = await opening
      streams.push(s)
      expect(s.res.statusCode).toBe(401)
      const ws = await socket
      expect(await ws.closed()).toBe(4401)
      await rt.publish('projects', 'updated', {})
      await sleep(100)
      expect(ws.frames.filter((fr) => fr.op === 'event')).toHaveLength(0)
      expect(rt.stats()).toMatchObject({ connections: 0, fallbackStreams: 0 })
    } finally {
      await rt.close(100)
      await srv.close()
    }
  })

  test('a stream whose client leaves while its authorize is pending frees its slot at once', async () => {
    f = await slowCms(new Set(['ben']))
    const { request } = await import('node:http')
    for (let i = 0; i < 3; i++) {
      const req = request(`${f.srv.base}/realtime/events?topics=project:${i}`, { headers: { 'x-user': 'ben' } })
      req.on('error', () => {})
      req.end()
      await sleep(50)
      req.destroy()
    }
    await sleep(50) // well before the 300 ms answers
    expect((f.rt as unknown as { sessions: { size: number } }).sessions.size).toBe(0)
  })

  test('every way a handshake or stream ends settles its admission: refusals (host, origin, 401) and admitted ones leave none in flight', async () => {
    f = await fixture({
      authenticate: (req: IncomingMessage) => (req.headers['x-user'] === undefined ? null : { id: String(req.headers['x-user']) }),
      allowedHosts: ['127.0.0.1'],
    })
    const port = f.srv.port
    await rawRequest(port, handshake(port, '/realtime', { Origin: 'https://evil.example', 'x-user': 'ben' }), 1000) // 403 origin
    await rawRequest(port, handshake(port, '/realtime', { Host: 'attacker.test', 'x-user': 'ben' }), 1000) // 403 host
    await rawRequest(port, handshake(port, '/realtime'), 1000) // 401
    await rawRequest(port, `GET /realtime/events?topics=projects HTTP/1.1\nHost: attacker.test\nx-user: ben`, 1000) // 403 host
    await rawRequest(port, `GET /realtime/events?topics=projects HTTP/1.1\nHost: 127.0.0.1:${port}`, 1000) // 401
    const ok = await f.connect(as('ben'))
    await ok.subscribe('projects')
    expect(f.rt.stats().refusals).toMatchObject({ origin: 1, host_not_allowed: 2, unauthenticated: 2 })
    const admitting = (f.rt as unknown as { sessions: { admitting: Set<unknown> } }).sessions.admitting
    for (let i = 0; i < 50 && admitting.size > 0; i++) await sleep(10)
    expect(admitting.size).toBe(0)
  })

  test('a logout that selected someone else does not end a connection being admitted', async () => {
    f = await slowCms(new Set(['ben']), 200)
    const socket = f.connect({ ...as('ben'), path: '/realtime?topics=projects' })
    await sleep(50)
    f.rt.disconnect({ user: 'anna' })
    const ws = await socket
    expect(await ws.op('subscribed')).toMatchObject({ topic: 'projects' })
    await f.rt.publish('projects', 'updated', {})
    expect(await ws.op('event')).toMatchObject({ topic: 'projects' })
  })

  test('presence and lock: reauthorize while their authorize is pending → forbidden, neither present nor held', async () => {
    const members = new Set(['ben'])
    f = await slowCms(members)
    const ben = await f.connect(as('ben'))
    ben.send({ op: 'presence', topic: 'project:1/item:2', tab: 'ben-tab-0001', meta: null })
    ben.send({ op: 'lock', key: 'project:1/item:3', tab: 'ben-tab-0001' })
    await sleep(100)
    members.delete('ben')
    await f.rt.reauthorize({ topic: 'project:1' })
    const errors = [await ben.op('error', 2000), await ben.op('error', 2000)]
    expect(errors.map((e) => e.code)).toEqual(['forbidden', 'forbidden'])
    await sleep(100)
    expect(ben.frames.filter((fr) => fr.op === 'present' || fr.op === 'lock')).toEqual([])
    expect(await f.rt.presence('project:1/item:2')).toEqual([])
    expect(await f.rt.locks.holder('project:1/item:3')).toBeNull()
  })
})

describe('locks tell the truth (items 6 and 10)', () => {
  test('unlock of a lock another tab holds answers not_holder and releases nothing', async () => {
    f = await cms(new Set(['anna', 'ben']))
    const anna = await f.connect(as('anna'))
    await editItem(anna, 'item:5', 'anna-tab-0001')
    const ben = await f.connect(as('ben'))
    ben.send({ op: 'unlock', key: 'item:5' })
    expect(await ben.op('error')).toMatchObject({ code: 'not_holder', topic: 'item:5' })
    expect(await f.rt.locks.holder('item:5')).toMatchObject({ user: 'anna' })
    // A free lock is simply unlocked.
    ben.send({ op: 'unlock', key: 'item:6' })
    expect(await ben.op('unlocked')).toEqual({ op: 'unlocked', key: 'item:6' })
    expect(ben.frames.filter((fr) => fr.op === 'error')).toEqual([])
  })

  test('losing access tells the holder lock-lost on the connection that holds it, and a second tab, only present, unsubscribed', async () => {
    const members = new Set(['anna', 'ben'])
    f = await cms(members)
    const tab1 = await f.connect(as('ben'))
    await editItem(tab1, 'project:1/item:3', 'ben-tab-0001')
    const tab2 = await f.connect(as('ben'))
    tab2.send({ op: 'presence', topic: 'project:1/item:3', tab: 'ben-tab-0002', meta: null })
    await tab2.op('present')
    members.delete('ben')
    await f.rt.reauthorize({ user: 'ben' })
    expect(await tab1.op('lock-lost')).toMatchObject({ key: 'project:1/item:3', by: null })
    expect(await tab2.op('unsubscribed')).toMatchObject({ topic: 'project:1/item:3', reason: 'forbidden' })
    expect(tab1.frames.filter((fr) => fr.op === 'unlocked')).toEqual([])
  })
})

describe('unlock while the same connection still asks for the lock (item 6)', () => {
  test('a reclaim in flight is given up: unlocked, quietly, and nobody holds it after', async () => {
    let slow = true
    f = await fixture({
      authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user']) }),
      authorize: async () => {
        if (slow) await sleep(200)
        return true
      },
    })
    const c = await f.connect(as('anna'))
    c.send({ op: 'lock', key: 'item:9', tab: 'anna-tab-0001' }) // what rejoin() sends after a reconnect
    c.send({ op: 'unlock', key: 'item:9' }) // and the page's release() right after
    expect(await c.op('unlocked')).toEqual({ op: 'unlocked', key: 'item:9' })
    await sleep(300)
    slow = false
    expect(c.frames.filter((fr) => fr.op === 'lock' || fr.op === 'error')).toEqual([])
    expect(await f.rt.locks.holder('item:9')).toBeNull()
  })
})
