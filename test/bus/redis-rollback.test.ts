/**
 * Redis faults of the last round (#19), on a redis-server of the test's own:
 * - a rollback: Redis restarted from an older RDB snapshot (what a failover to
 *   a lagging replica looks like too). Events published after the snapshot are
 *   gone; a client whose cursor points before or into them must get `resync`,
 *   never `recovered: true` around the hole;
 * - a foreign message whose id is a minute ahead (inside the old clock-skew
 *   allowance) cannot hold a topic's live delivery: dropped, counted;
 * - an overload burst through one node while Redis is healthy: every event
 *   reaches every client on the other nodes, in order, with no local-only
 *   publish and no resync (a busy Redis is load, not a fault).
 */
import { existsSync } from 'node:fs'
import type { Frame, TestClient } from '../helpers/net'
import { DelayProxy, RedisServer } from './redis-server'
import { until } from './redis-helpers'
import { busNodes } from './bus-nodes'

const available = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].some((p) => existsSync(p))
if (!available && process.env.CI !== 'true') console.log('skipping the Redis rollback tests: no redis-server binary (apt-get install -y redis-server)')
const d = available || process.env.CI === 'true' ? describe : describe.skip
jest.setTimeout(90_000)

d('Redis rolled back, foreign ids, overload', () => {
  let redis: RedisServer
  const cluster = busNodes({ keyPrefix: 'rb:', commandTimeoutMs: 500, livenessMs: 200 })
  const { cleanup, client } = cluster
  beforeEach(async () => { redis = await new RedisServer().start() })
  afterEach(async () => {
    await cluster.close()
    await redis.stop()
  })

  const node = (redisPort = redis.port, commandTimeoutMs = 500) => cluster.node(redisPort, { commandTimeoutMs })

  test('restarted from an older snapshot: a cursor before the lost events gets resync, never recovered around the hole; live delivery goes on', async () => {
    const a = await node()
    const b = await node()
    const t = 'project:rollback'
    const watcher = await client(b.port)
    await watcher.subscribe(t)
    const e1 = await a.rt.publish(t, 'n', 1)
    await watcher.op('event')
    await redis.command('SAVE') // the snapshot holds e1
    await a.rt.publish(t, 'n', 2)
    await a.rt.publish(t, 'n', 3)
    const f2 = await watcher.op('event')
    const f3 = await watcher.op('event')
    expect([f2.data, f3.data]).toEqual([2, 3])
    // Redis dies and comes back from the snapshot: e2 and e3 are gone, the stream's header (its epoch) is not.
    await redis.kill()
    await redis.start()
    await until(() => a.bus.connected && b.bus.connected, 10_000, 'both nodes back')
    await until(() => (a.bus.stats().rollbacks + b.bus.stats().rollbacks) >= 1, 5000, 'the rollback noticed')
    // The subscriber that saw e2, e3 is told its view cannot be trusted.
    await watcher.op('resync')
    const e4 = await a.rt.publish(t, 'n', 4)
    expect((await watcher.op('event')).id).toBe(e4.id)
    // A client that left at e1 comes back: the hole after e1 means resync, not recovered: true and e4.
    const back = await client(b.port)
    back.send({ op: 'subscribe', topic: t, since: e1.id })
    const first = await back.next()
    expect(first).toEqual({ op: 'resync', topic: t })
    const sub = await back.op('subscribed')
    expect(sub).toMatchObject({ topic: t, recovered: false })
    // And one that saw e3, on the other node.
    const ahead = await client(a.port)
    ahead.send({ op: 'subscribe', topic: t, since: f3.id as string })
    expect(await ahead.next()).toEqual({ op: 'resync', topic: t })
  })

  test('a publisher alone (nobody subscribed anywhere) still notices: its next publish starts a new epoch, so the old cursor resyncs', async () => {
    const a = await node()
    const t = 'project:rollback-quiet'
    const e1 = await a.rt.publish(t, 'n', 1)
    await redis.command('SAVE')
    await a.rt.publish(t, 'n', 2)
    await redis.kill()
    await redis.start()
    await until(() => a.bus.connected, 10_000, 'back')
    const e3 = await a.rt.publish(t, 'n', 3)
    expect(e3.id.split('_')[0]).not.toBe(e1.id.split('_')[0]) // a new epoch
    const c = await client(a.port)
    c.send({ op: 'subscribe', topic: t, since: e1.id })
    expect(await c.next()).toEqual({ op: 'resync', topic: t })
  })

  test('a foreign message a minute ahead of the clock cannot hold live delivery: dropped and counted, the next events arrive at once', async () => {
    const a = await node()
    const b = await node()
    const t = 'project:future'
    const c = await client(b.port)
    await c.subscribe(t)
    const e1 = await a.rt.publish(t, 'n', 1)
    expect((await c.op('event')).id).toBe(e1.id)
    const [epoch, id] = e1.id.split('_') as [string, string]
    const future = `${Date.now() + 59_000}-0`
    await redis.command('PUBLISH', `rb:live:${t}`, JSON.stringify({ i: future, p: id, e: epoch, t: 'forged', d: 'x' }))
    await new Promise((r) => setTimeout(r, 100))
    const t0 = Date.now()
    const e2 = await a.rt.publish(t, 'n', 2)
    const got = await c.op('event')
    expect(got.id).toBe(e2.id)
    expect(Date.now() - t0).toBeLessThan(1000)
    expect(c.frames.filter((f: Frame) => f.type === 'forged')).toEqual([])
    expect(b.bus.stats().rejectedMessages).toBeGreaterThanOrEqual(1)
  })

  test('an overload burst of 100,000 events through one node while Redis is healthy: every client on the other nodes gets all, in order; 0 local-only, 0 resyncs', async () => {
    // Three nodes and four clients share this one test process, so a CI machine busy with other work holds
    // a command up here where separate node processes would not: this test is about load on Redis, not
    // about that bound, hence 2 s. It still catches what it was written for: with timers started when a
    // command was queued (not sent), 2 s behind 100,000 others sent nearly all of them local.
    const pub = await node(redis.port, 2000)
    const n1 = await node(redis.port, 2000)
    const n2 = await node(redis.port, 2000)
    const t = 'import:bulk'
    const clients = [await client(n1.port), await client(n1.port), await client(n2.port), await client(n2.port)]
    for (const c of clients) await c.subscribe(t)
    const N = 100_000
    const counts = clients.map(() => ({ n: 0, last: -1, reorders: 0, resyncs: 0 }))
    clients.forEach((c, k) => {
      c.ws.on('message', () => {
        // Counted here, and not kept: 400,000 frames would only weigh on the run.
        for (const f of c.frames.splice(0)) {
          if (f.op === 'resync') counts[k]!.resyncs++
          if (f.op !== 'event') continue
          const v = f.data as number
          if (v !== counts[k]!.last + 1) counts[k]!.reorders++
          counts[k]!.last = v
          counts[k]!.n++
        }
      })
    })
    // The event loop of the publishing process, watched while it publishes (printed; the ~50 ms goal is the bench's).
    let maxBlock = 0
    let tick = performance.now()
    const watch = setInterval(() => {
      const now = performance.now()
      maxBlock = Math.max(maxBlock, now - tick - 10)
      tick = now
    }, 10)
    cleanup.push(() => clearInterval(watch)) // also when the test fails: a live interval keeps jest from exiting
    const t0 = Date.now()
    const all: Array<Promise<unknown>> = []
    for (let i = 0; i < N; i++) {
      all.push(pub.rt.publish(t, 'row', i))
      if (i % 1000 === 999) await new Promise((r) => setImmediate(r)) // an import loop that yields now and then
    }
    const ids = await Promise.all(all) as Array<{ id: string }>
    await until(() => counts.every((c) => c.n >= N), 60_000, 'every client has every event').catch((err: unknown) => {
      throw new Error(`${(err as Error).message}: ${JSON.stringify({ counts, pub: pub.bus.stats(), n1: n1.bus.stats(), n2: n2.bus.stats() })}`)
    })
    clearInterval(watch)
    const ms = Date.now() - t0
    console.log(`overload: ${N} events through one node to 4 clients on 2 others in ${ms} ms (${Math.round(N / (ms / 1000))} ev/s); ` +
      `publisher's longest event-loop block ${maxBlock.toFixed(0)} ms; most queued ${pub.bus.stats().queued}`)
    expect(ids.filter((e) => e.id.startsWith('local:'))).toHaveLength(0)
    expect(pub.bus.stats()).toMatchObject({ localPublishes: 0, resyncs: 0 })
    for (const b of [n1, n2]) expect(b.bus.stats()).toMatchObject({ localPublishes: 0, resyncs: 0 })
    expect(counts).toEqual(clients.map(() => ({ n: N, last: N - 1, reorders: 0, resyncs: 0 })))
  })

  test('a reply slower than commandTimeoutMs (200 ms each way, bound 300): the id publish returns is the id the other nodes deliver', async () => {
    // The script runs within its deadline (200 ms after it is sent) and its reply comes after the bound
    // (400 ms). The node used to give up at 300 ms and return a local id while every other node
    // delivered the event under its stream id; it now waits out the deadline plus the clock estimate's
    // error (half the probe's round trip), by when the reply is in.
    const slow = await new DelayProxy(redis.port, 200).start()
    cleanup.push(() => slow.stop())
    const far = await node(slow.port, 300)
    const near = await node()
    const t = 'project:late-reply'
    const c = await client(near.port)
    await c.subscribe(t)
    await far.rt.publish(t, 'n', 0) // loads the script; its id may be local (a missing script costs a second round trip)
    await new Promise((r) => setTimeout(r, 1500)) // probes over the slow link: the clock estimate knows its round trip
    c.frames.splice(0)
    const ids: string[] = []
    for (let i = 1; i <= 3; i++) ids.push((await far.rt.publish(t, 'n', i)).id)
    const got: string[] = []
    for (let i = 1; i <= 3; i++) got.push((await c.op('event', 5000)).id as string)
    expect(ids.filter((id) => id.startsWith('local:'))).toEqual([])
    expect(got).toEqual(ids)
    expect(c.frames.filter((f: Frame) => f.op === 'resync')).toEqual([])
  })

  test('a slow link (every chunk 200 ms late each way, under commandTimeoutMs 700): all delivered in order, 0 local-only, 0 resyncs, publishes wait for room instead of failing', async () => {
    // A 400 ms round trip: one fits the bound with room for a loaded machine (the proxy runs in this
    // process); the two a fresh Redis costs when a script is missing (NOSCRIPT, then EVAL) do not, which
    // is what went local when both shared one timer.
    const slowA = await new DelayProxy(redis.port, 200).start()
    const slowB = await new DelayProxy(redis.port, 200).start()
    cleanup.push(() => slowA.stop(), () => slowB.stop())
    const a = await node(slowA.port, 700)
    const b = await node(slowB.port, 700)
    const t = 'project:far'
    const c = await client(b.port)
    expect(await c.subscribe(t)).toMatchObject({ op: 'subscribed' })
    // Subscribing takes two round trips (800 ms) here, over the bound: the first cursor is a local one. Counted from now on.
    await new Promise((r) => setTimeout(r, 1500))
    const before = [a, b].map((n) => n.bus.stats())
    const N = 600
    let slowest = 0
    const ids = await Promise.all(Array.from({ length: N }, async (_x, i) => {
      const t0 = Date.now()
      const e = await a.rt.publish(t, 'n', i)
      slowest = Math.max(slowest, Date.now() - t0)
      return e.id
    }))
    const got: number[] = []
    while (got.length < N) {
      const f = await c.op('event', 10_000).catch((err: Error) => { throw new Error(`${err.message.slice(0, 300)} ${JSON.stringify({ got: got.length, slowest, a: a.bus.stats(), b: b.bus.stats() })}`) })
      got.push(f.data as number)
    }
    console.log(`slow link: ${N} publishes, slowest ${slowest} ms (a 400 ms round trip; queued behind 256 in flight at most)`)
    expect(got).toEqual(Array.from({ length: N }, (_x, i) => i))
    expect(ids.filter((id) => id.startsWith('local:'))).toHaveLength(0)
    expect(c.frames.filter((f: Frame) => f.op === 'resync')).toEqual([])
    ;[a, b].forEach((n, k) => {
      const now = n.bus.stats()
      expect({ localPublishes: now.localPublishes - before[k]!.localPublishes, resyncs: now.resyncs - before[k]!.resyncs, timeouts: now.timeouts - before[k]!.timeouts })
        .toEqual({ localPublishes: 0, resyncs: 0, timeouts: 0 })
    })
  })
})
