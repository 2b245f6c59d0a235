/**
 * Session life across nodes (control.ts): a logout or a lost permission is
 * handled by the node that took the request, and the user's connections on
 * every other node sharing Redis end or lose the topic as well, at once,
 * not at the next `revalidateMs`. A predicate stays on its node (a function
 * cannot cross the wire); `{ match }` is the data selector that does.
 */
import { createRealtime, type Realtime } from 'cms-realtime'
import { RedisBus } from 'cms-realtime/redis'
import type { IncomingMessage } from 'node:http'
import { connect, listen, type TestClient } from '../helpers/net'
import { connectRedis, deleteKeys, redisReachable, uniquePrefix, until, type TestRedis } from './redis-helpers'

const d = redisReachable('session life across nodes') ? describe : describe.skip

interface Who { id: string; sessionId: string }

d('disconnect and reauthorize reach every node on the bus', () => {
  const prefix = uniquePrefix()
  let direct: TestRedis
  const cleanup: Array<() => unknown> = []
  /** Who may read which topic: the app's own store, shared by both nodes. */
  const readers = new Map<string, Set<string>>()

  beforeAll(async () => { direct = await connectRedis() })
  afterEach(async () => { for (const fn of cleanup.splice(0).reverse()) await fn() })
  afterAll(async () => {
    await deleteKeys(direct, prefix)
    await direct.close()
  })

  async function node(): Promise<{ rt: Realtime; port: number }> {
    const client = await connectRedis()
    const bus = new RedisBus(client, { keyPrefix: prefix })
    const rt = createRealtime({
      bus,
      authenticate: (req) => {
        const h = (req as IncomingMessage).headers
        return typeof h['x-user'] === 'string' ? { id: h['x-user'], sessionId: String(h['x-session']) } : null
      },
      authorize: (user, topic) => readers.get(topic)?.has((user as Who).id) === true,
    })
    const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
    rt.attach(srv.server)
    cleanup.push(() => client.destroy(), () => bus.close(), () => srv.close(), () => rt.close())
    await until(() => bus.connected, 3000, 'bus connected')
    return { rt, port: srv.port }
  }

  async function editor(port: number, id: string, session: string, topic: string): Promise<TestClient> {
    const c = await connect(port, { headers: { 'x-user': id, 'x-session': session } })
    cleanup.push(() => c.close())
    expect((await c.subscribe(topic)).op).toBe('subscribed')
    return c
  }

  test("a disconnect on node A ends the user's connections on node B within a second; other users stay", async () => {
    readers.set('project:1', new Set(['anna', 'ben']))
    const a = await node()
    const b = await node()
    const annaOnB = await editor(b.port, 'anna', 's1', 'project:1')
    const benOnB = await editor(b.port, 'ben', 's2', 'project:1')
    const t0 = Date.now()
    expect(a.rt.disconnect({ user: 'anna' }, 'signed out')).toBe(0) // none on A itself
    expect(await annaOnB.closed(2000)).toBe(4401)
    const ms = Date.now() - t0
    console.log(`disconnect on A → 4401 on B in ${ms} ms`)
    expect(ms).toBeLessThan(1000)
    // Nothing reaches her after; ben, untouched, still gets events.
    await a.rt.publish('project:1', 'updated', { n: 1 })
    expect((await benOnB.op('event')).data).toEqual({ n: 1 })
    expect(benOnB.closeCode).toBeUndefined()
  })

  test("{ match } selects one session of a user on every node (one device signed out), and a predicate only this node's", async () => {
    readers.set('project:2', new Set(['anna']))
    const a = await node()
    const b = await node()
    const phone = await editor(b.port, 'anna', 'phone', 'project:2')
    const laptop = await editor(b.port, 'anna', 'laptop', 'project:2')
    a.rt.disconnect((u) => (u as Who).sessionId === 'laptop') // a function cannot cross the wire
    a.rt.disconnect({ match: { sessionId: ['phone'] } })
    expect(await phone.closed(2000)).toBe(4401)
    await new Promise((r) => setTimeout(r, 200))
    expect(laptop.closeCode).toBeUndefined()
  })

  test('a reauthorize on node A withdraws a topic on node B (forbidden) within a second, and B sends it nothing more', async () => {
    readers.set('project:3', new Set(['anna']))
    const a = await node()
    const b = await node()
    const anna = await editor(b.port, 'anna', 's1', 'project:3')
    readers.get('project:3')!.delete('anna')
    const t0 = Date.now()
    await a.rt.reauthorize({ topic: 'project:3' })
    const gone = await anna.next((f) => f.op === 'unsubscribed' && f.topic === 'project:3', 2000)
    console.log(`reauthorize on A → unsubscribed on B in ${Date.now() - t0} ms`)
    expect(gone.reason).toBe('forbidden')
    await a.rt.publish('project:3', 'updated', { secret: true })
    await new Promise((r) => setTimeout(r, 300))
    expect(anna.frames.filter((f) => f.op === 'event')).toEqual([])
    expect(anna.closeCode).toBeUndefined()
  })

  test("no client may subscribe to the nodes' own control topic", async () => {
    readers.set('cms-realtime:control', new Set(['mallory'])) // even if the app's authorize says yes
    const a = await node()
    const c = await connect(a.port, { headers: { 'x-user': 'mallory', 'x-session': 'm' } })
    cleanup.push(() => c.close())
    expect(await c.subscribe('cms-realtime:control')).toMatchObject({ op: 'error', code: 'forbidden' })
  })
})
