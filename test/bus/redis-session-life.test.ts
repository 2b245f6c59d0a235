/**
 * Session life across nodes (control.ts): a logout or a lost permission is
 * handled by the node that took the request, and the user's connections on
 * every other node sharing Redis end or lose the topic as well, at once,
 * not at the next `revalidateMs`. A predicate stays on its node (a function
 * cannot cross the wire); `{ match }` is the data selector that does.
 */
import type { IncomingMessage } from 'node:http'
import { MemoryBus } from '../../lib/bus/memory'
import { createRealtime } from '../../lib/server/realtime'
import { CONTROL_TOPIC } from '../../lib/sessions/control'
import type { RealtimeOptions } from '../../lib/types'
import { connect, listen, type TestClient } from '../helpers/net'
import { busNodes } from './bus-nodes'
import { connectRedis, deleteKeys, redisReachable, uniquePrefix, type TestRedis } from './redis-helpers'

const d = redisReachable('session life across nodes') ? describe : describe.skip

interface Who { id: string; sessionId: string }

d('disconnect and reauthorize reach every node on the bus', () => {
  const prefix = uniquePrefix()
  const nodes = busNodes({ keyPrefix: prefix })
  let direct: TestRedis
  /** Who may read which topic: the app's own store, shared by both nodes. */
  const readers = new Map<string, Set<string>>()
  const options: RealtimeOptions = {
    authenticate: (req) => {
      const h = (req as IncomingMessage).headers
      return typeof h['x-user'] === 'string' ? { id: h['x-user'], sessionId: String(h['x-session']) } : null
    },
    authorize: (user, topic) => readers.get(topic)?.has((user as Who).id) === true,
  }

  beforeAll(async () => { direct = await connectRedis() })
  afterEach(() => nodes.close())
  afterAll(async () => {
    await deleteKeys(direct, prefix)
    await direct.close()
  })

  const node = () => nodes.node(6379, {}, options)

  async function editor(port: number, id: string, session: string, topic: string): Promise<TestClient> {
    const c = await connect(port, { headers: { 'x-user': id, 'x-session': session } })
    nodes.cleanup.push(() => c.close())
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
    nodes.cleanup.push(() => c.close())
    expect(await c.subscribe('cms-realtime:control')).toMatchObject({ op: 'error', code: 'forbidden' })
  })
})

describe('the control topic, from the bus', () => {
  /** A node on a bus given to it (so shared, as with Redis), whose `onResync` the test can fire. */
  async function node(readers: Set<string>) {
    let resync: ((topic: string) => void) | undefined
    const bus = Object.assign(new MemoryBus(), { onResync: (l: (topic: string) => void) => { resync = l } })
    const rt = createRealtime({
      bus,
      authenticate: (req) => ({ id: String((req as IncomingMessage).headers['x-user']) }),
      authorize: (user) => readers.has((user as { id: string }).id),
    })
    const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
    rt.attach(srv.server)
    const c = await connect(srv.port, { headers: { 'x-user': 'anna' } })
    expect((await c.subscribe('project:1')).op).toBe('subscribed')
    return { rt, bus, c, resync: (t: string) => resync!(t), close: async () => { c.close(); await rt.close(); await srv.close() } }
  }

  test('what is not a control message (not JSON, a bad selector, no selector for a disconnect) is dropped, not acted on or thrown', async () => {
    const n = await node(new Set(['anna']))
    try {
      const errors = n.rt.stats().errors
      for (const data of ['not json', '{"from":"x","op":"disconnect","selector":{}}', '{"from":"x","op":"disconnect"}',
        '{"from":"x","op":"disconnect","selector":{"match":{}}}', '{"from":"x","op":"explode","selector":{"user":"anna"}}']) {
        n.bus.publish(CONTROL_TOPIC, 'control', data)
      }
      await new Promise((r) => setTimeout(r, 100))
      expect(n.c.closeCode).toBeUndefined()
      expect(n.rt.stats().errors).toBe(errors)
      // A well-formed one from another node is acted on.
      n.bus.publish(CONTROL_TOPIC, 'control', '{"from":"another-node","op":"disconnect","selector":{"user":"anna"}}')
      expect(await n.c.closed(2000)).toBe(4401)
    } finally {
      await n.close()
    }
  })

  test('a hole in the control topic (messages of other nodes lost) re-checks every subscription at once', async () => {
    const readers = new Set(['anna'])
    const n = await node(readers)
    try {
      readers.delete('anna') // withdrawn on another node, whose reauthorize was lost
      n.resync(CONTROL_TOPIC)
      expect(await n.c.next((f) => f.op === 'unsubscribed' && f.topic === 'project:1', 2000)).toMatchObject({ reason: 'forbidden' })
    } finally {
      await n.close()
    }
  })
})
