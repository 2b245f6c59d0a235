/**
 * Two cms-realtime nodes (two HTTP servers, two RedisBus) sharing the real
 * Redis, driven by real `ws` clients: live events cross nodes in order, a
 * client recovers on the other node what it missed, or is told to resync.
 */
import { createRealtime, type Realtime } from 'cms-realtime'
import { RedisBus, type RedisBusOptions } from 'cms-realtime/redis'
import { connect, listen, type Frame, type TestClient } from '../helpers/net'
import { connectRedis, deleteKeys, redisReachable, RedisProxy, uniquePrefix, until, type TestRedis } from './redis-helpers'

/** Stream cursors: `<epoch>_<id>`, both stream ids. */
const CURSOR = /^\d+-\d+\.[0-9a-f]{8}_\d+-\d+$/

const d = redisReachable('RedisBus nodes') ? describe : describe.skip

d('two nodes sharing Redis', () => {
  const prefix = uniquePrefix()
  let direct: TestRedis
  const cleanup: Array<() => unknown> = []
  let n = 0
  const topic = (): string => `project:${++n}`

  beforeAll(async () => { direct = await connectRedis() })
  afterEach(async () => { for (const fn of cleanup.splice(0).reverse()) await fn() })
  afterAll(async () => {
    await deleteKeys(direct, prefix)
    await direct.close()
  })

  async function node(options: RedisBusOptions = {}, redisPort?: number): Promise<{ rt: Realtime; port: number; bus: RedisBus }> {
    const client = await connectRedis(redisPort)
    const bus = new RedisBus(client, { keyPrefix: prefix, ...options })
    const rt = createRealtime({ bus })
    const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
    rt.attach(srv.server)
    cleanup.push(() => client.destroy(), () => bus.close(), () => srv.close(), () => rt.close())
    await until(() => bus.connected, 3000, 'bus connected')
    return { rt, port: srv.port, bus }
  }

  async function client(port: number): Promise<TestClient> {
    const c = await connect(port)
    cleanup.push(() => c.close())
    return c
  }

  const events = async (c: TestClient, count: number): Promise<Frame[]> => {
    const out: Frame[] = []
    while (out.length < count) out.push(await c.op('event'))
    return out
  }

  test('a client on node B receives, in order, the events published on node A', async () => {
    const a = await node()
    const b = await node()
    const t = topic()
    const onB = await client(b.port)
    expect(await onB.subscribe(t)).toMatchObject({ op: 'subscribed', topic: t })
    const sent = []
    for (let i = 0; i < 5; i++) sent.push(await a.rt.publish(t, 'item.updated', { i }))
    const got = await events(onB, 5)
    expect(got.map((f) => f.id)).toEqual(sent.map((p) => p.id))
    expect(got.map((f) => f.data)).toEqual([0, 1, 2, 3, 4].map((i) => ({ i })))
  })

  test('a client that left node A recovers exactly the missed events on node B', async () => {
    const a = await node()
    const b = await node()
    const t = topic()
    const onA = await client(a.port)
    await onA.subscribe(t)
    await a.rt.publish(t, 'seen', 1)
    const last = (await onA.op('event')).id as string
    onA.close()
    const missed = [await a.rt.publish(t, 'missed', 2), await b.rt.publish(t, 'missed', 3), await a.rt.publish(t, 'missed', 4)]

    const onB = await client(b.port)
    expect(await onB.subscribe(t, last)).toEqual({ op: 'subscribed', topic: t, recovered: true })
    expect((await events(onB, 3)).map((f) => f.id)).toEqual(missed.map((p) => p.id))
    const live = await a.rt.publish(t, 'live', 5)
    expect((await onB.op('event')).id).toBe(live.id)
    await new Promise((r) => setTimeout(r, 50))
    expect(onB.frames.filter((f) => f.op === 'event')).toEqual([])
  })

  test('long polling needs no sticky sessions: polls alternating between nodes, one of them restarted, get every event exactly once, in order', async () => {
    const a = await node()
    let b = await node()
    const t = topic()
    const poll = async (port: number, since?: string): Promise<{ cursor: string; frames: Frame[] }> => {
      const r = await fetch(`http://127.0.0.1:${port}/realtime/poll?topics=${t}${since === undefined ? '' : `&since=${since}`}`)
      expect(r.status).toBe(200)
      return (await r.json()) as { cursor: string; frames: Frame[] }
    }
    let cursor = (await poll(a.port)).cursor
    const got: unknown[] = []
    let sent = 0
    for (let round = 0; round < 12; round++) {
      if (round === 6) {
        // Node B restarts: a new process, same Redis; the next polls to it resume from their cursors.
        await b.rt.close()
        b = await node()
      }
      for (let i = 0; i < 5; i++) await (i % 2 === 0 ? a : b).rt.publish(t, 'n', sent++)
      const r = await poll(round % 2 === 0 ? b.port : a.port, cursor)
      expect(r.frames.filter((f) => f.op === 'resync')).toEqual([])
      got.push(...r.frames.filter((f) => f.op === 'event').map((f) => f.data))
      cursor = r.cursor
    }
    while (got.length < sent) {
      const r = await poll(a.port, cursor)
      got.push(...r.frames.filter((f) => f.op === 'event').map((f) => f.data))
      cursor = r.cursor
    }
    expect(got).toEqual(Array.from({ length: sent }, (_x, i) => i))
  })

  test('a client whose cursor was trimmed from the stream gets resync and a fresh cursor', async () => {
    const a = await node({ historySize: 5 })
    const b = await node({ historySize: 5 })
    const t = topic()
    const first = await a.rt.publish(t, 'old', 0)
    for (let i = 1; i < 250; i++) await a.rt.publish(t, 'more', i)
    const onB = await client(b.port)
    onB.send({ op: 'subscribe', topic: t, since: first.id })
    expect(await onB.op('resync')).toEqual({ op: 'resync', topic: t })
    const sub = await onB.op('subscribed')
    expect(sub).toMatchObject({ topic: t, recovered: false })
    const next = await a.rt.publish(t, 'next', 'x')
    expect((await onB.op('event')).id).toBe(next.id)
    expect(await b.bus.history(t, sub.cursor as string)).toEqual([{ topic: t, id: next.id, type: 'next', data: '"x"' }])
  })

  test('while Redis is unreachable a node still serves its own clients, and a recovering client resyncs', async () => {
    const proxy = await new RedisProxy().start()
    cleanup.push(() => proxy.close())
    const a = await node({ commandTimeoutMs: 300 }, proxy.port)
    const t = topic()
    const c = await client(a.port)
    await c.subscribe(t)
    await proxy.cut()
    await until(() => !a.bus.connected, 3000, 'outage noticed')
    const p = await a.rt.publish(t, 'offline', { ok: true })
    const ev = await c.op('event')
    expect(ev).toMatchObject({ id: p.id, type: 'offline', data: { ok: true } })
    c.close()

    const again = await client(a.port)
    again.send({ op: 'subscribe', topic: t, since: p.id })
    expect(await again.op('resync')).toEqual({ op: 'resync', topic: t })
    await proxy.restore()
    await until(() => a.bus.connected, 5000, 'reconnected')
    const back = await a.rt.publish(t, 'online', 1)
    expect(back.id).toMatch(CURSOR)
    expect((await again.op('event')).id).toBe(back.id)
  })

  test('clients on other nodes are told to resync when a node published without Redis', async () => {
    const proxy = await new RedisProxy().start()
    cleanup.push(() => proxy.close())
    const a = await node({ commandTimeoutMs: 300 }, proxy.port)
    const b = await node()
    const t = topic()
    const onB = await client(b.port)
    await onB.subscribe(t)
    await proxy.cut()
    await until(() => !a.bus.connected, 3000, 'outage noticed')
    await a.rt.publish(t, 'offline', 1) // reaches only node A's clients: B's must learn they missed it
    await proxy.restore()
    await until(() => a.bus.connected, 5000, 'reconnected')
    expect(await onB.op('resync', 5000)).toEqual({ op: 'resync', topic: t })
    const live = await a.rt.publish(t, 'online', 2)
    expect((await onB.op('event')).id).toBe(live.id)
  })
})
