/**
 * Every way a tab leaves presence, on two nodes sharing the real Redis
 * (#18, item 9): an explicit leave, the public client's farewell (what it
 * sends on `pagehide` and `close()`), a clean close and a cut (the grace),
 * and `reauthorize`. Each is timed from the fault to the moment the other
 * node's tab sees the member go: within the grace, never the lease. The
 * script that removes an entry once failed to compile on Redis and every
 * exit waited for the lease; `stats().errors` must stay 0.
 */
import type { IncomingMessage } from 'node:http'
import WebSocket from 'ws'
import { createRealtime, type Realtime } from 'cms-realtime'
import { RedisBus } from 'cms-realtime/redis'
import { createClient } from '../../lib/client'
import { COLLAB_SCRIPTS } from '../../lib/collab/redis-store'
import { HISTORY, LATEST, PUBLISH } from '../../lib/bus/redis-scripts'
import { connect, listen, type Frame, type TestClient } from '../helpers/net'
import { connectRedis, deleteKeys, redisReachable, uniquePrefix, until, type TestRedis } from '../bus/redis-helpers'

const d = redisReachable('presence exits on Redis') ? describe : describe.skip
/** A lease far above the grace, so a member that waits for its lease is plain to see. */
const TIMING = { leaveGraceMs: 500, lockGraceMs: 500, leaseMs: 3000 }

interface PresenceFrame { members: Array<{ user: string }>; lock: { user: string } | null }

d('presence exits on the Redis bus', () => {
  const prefix = uniquePrefix()
  let direct: TestRedis
  const cleanup: Array<() => unknown> = []
  /** Users who lost access to every topic (for `reauthorize`). */
  const revoked = new Set<string>()

  beforeAll(async () => { direct = await connectRedis() })
  afterEach(async () => {
    revoked.clear()
    for (const fn of cleanup.splice(0).reverse()) await fn()
  })
  afterAll(async () => {
    await deleteKeys(direct, prefix)
    await direct.close()
  })

  async function node(): Promise<{ rt: Realtime; port: number }> {
    const client = await connectRedis()
    const bus = new RedisBus(client, { keyPrefix: prefix })
    const rt = createRealtime({
      bus,
      authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user']) }),
      authorize: (user, _topic) => !revoked.has((user as { id: string }).id),
      collab: TIMING,
    })
    const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
    rt.attach(srv.server)
    cleanup.push(() => client.destroy(), () => bus.close(), () => srv.close(), () => rt.close(100))
    await until(() => bus.connected, 3000, 'bus connected')
    return { rt, port: srv.port }
  }

  async function tab(port: number, user: string, topic: string): Promise<TestClient> {
    const c = await connect(port, { headers: { 'x-user': user } })
    cleanup.push(() => c.close())
    c.send({ op: 'presence', topic, tab: `${user}-tab-0001`, meta: null })
    await c.op('present')
    return c
  }

  /** The observer's presence frames until `user` is gone; ms from `t0`. */
  async function goneAfter(observer: TestClient, user: string, t0: number): Promise<number> {
    await observer.next((f: Frame) => f.op === 'presence' && !(f as unknown as PresenceFrame).members.some((m) => m.user === user), TIMING.leaseMs * 3)
    return Date.now() - t0
  }

  /** Two nodes, ben on A and anna watching on B, both present on `topic`. */
  async function scene(topic: string) {
    const a = await node()
    const b = await node()
    const anna = await tab(b.port, 'anna', topic)
    const ben = await tab(a.port, 'ben', topic)
    await anna.next((f) => f.op === 'presence' && (f as unknown as PresenceFrame).members.length === 2)
    return { a, b, anna, ben }
  }

  const exits: Array<[string, (s: Awaited<ReturnType<typeof scene>>, topic: string) => Promise<void>, number]> = [
    ['an explicit leave', async ({ ben }, topic) => { ben.send({ op: 'leave', topic }) }, 300],
    ['reauthorize after access is withdrawn', async ({ a }) => { revoked.add('ben'); await a.rt.reauthorize({ user: 'ben' }) }, 300],
    ['a clean close (1000), after the grace', async ({ ben }) => { ben.ws.close(1000) }, TIMING.leaveGraceMs + 700],
    ['a cut connection (the tab\'s process killed), after the grace', async ({ ben }) => { ben.close() }, TIMING.leaveGraceMs + 700],
  ]

  test.each(exits)('%s: the other node sees the member go in time, and nothing failed', async (_name, exit, withinMs) => {
    const topic = `item:${Math.random().toString(36).slice(2, 8)}`
    const s = await scene(topic)
    const t0 = Date.now()
    await exit(s, topic)
    const ms = await goneAfter(s.anna, 'ben', t0)
    console.log(`presence exit on Redis, ${_name}: gone on the other node after ${ms} ms (grace ${TIMING.leaveGraceMs}, lease ${TIMING.leaseMs})`)
    expect(ms).toBeLessThan(withinMs)
    expect((await s.b.rt.presence(topic)).map((m) => m.user)).toEqual(['anna'])
    expect(s.a.rt.stats().errors).toBe(0)
    expect(s.b.rt.stats().errors).toBe(0)
  })

  test("the public client's farewell (sent on pagehide and close()) removes the tab at once, on the other node too", async () => {
    const topic = 'item:farewell'
    const a = await node()
    const b = await node()
    const anna = await tab(b.port, 'anna', topic)
    const WS = class extends WebSocket {
      constructor(url: string, protocols?: string | string[]) { super(url, protocols, { headers: { 'x-user': 'ben' } }) }
    }
    const ben = createClient({ configUrl: `http://127.0.0.1:${a.port}/realtime/config`, WebSocket: WS, share: false })
    cleanup.push(() => ben.close())
    const p = ben.presence(topic, null)
    await until(() => p.members.length === 2, 3000, 'ben present')
    await anna.next((f) => f.op === 'presence' && (f as unknown as PresenceFrame).members.length === 2)
    const t0 = Date.now()
    ben.close()
    const ms = await goneAfter(anna, 'ben', t0)
    console.log(`presence exit on Redis, the client's farewell: ${ms} ms`)
    expect(ms).toBeLessThan(300)
    expect(a.rt.stats().errors).toBe(0)
  })
})

d('the Lua scripts', () => {
  test('every script of the bus and of presence and locks compiles on Redis (a syntax error shows only when it runs)', async () => {
    const redis = await connectRedis()
    try {
      const all = { ...COLLAB_SCRIPTS, PUBLISH, HISTORY, LATEST }
      for (const [name, s] of Object.entries(all)) {
        await expect(redis.scriptLoad(s.source).catch((err: Error) => `${name}: ${err.message}`)).resolves.toBe(s.sha)
      }
    } finally {
      await redis.close()
    }
  })
})
