/**
 * The `Bus` contract, the same assertions for every bus: cursors, ordering,
 * history windows and foreign cursors. RedisBus runs against the real Redis.
 */
import { MemoryBus } from '../../lib/bus/memory'
import { RedisBus } from '../../lib/bus/redis'
import type { Bus, BusEvent } from '../../lib/types'
import { connectRedis, deleteKeys, redisReachable, uniquePrefix, type TestRedis } from './redis-helpers'

interface Made {
  bus: Bus
  /** Publishes that push the first event out of a history of `historySize` 5 (Redis trims whole nodes of 100). */
  overflow: number
}

interface Flavour {
  name: string
  available: boolean
  make(historySize?: number): Made
  teardown(): Promise<void>
}

const memory: Flavour = {
  name: 'MemoryBus',
  available: true,
  make: (historySize) => ({ bus: new MemoryBus(historySize === undefined ? {} : { historySize }), overflow: 10 }),
  teardown: async () => {},
}

const prefix = uniquePrefix()
let client: TestRedis | undefined
const redis: Flavour = {
  name: 'RedisBus',
  available: redisReachable('RedisBus contract'),
  make: (historySize) => ({ bus: new RedisBus(client!, historySize === undefined ? { keyPrefix: prefix } : { keyPrefix: prefix, historySize }), overflow: 250 }),
  teardown: async () => {
    if (client === undefined) return
    await deleteKeys(client, prefix)
    await client.close()
  },
}

for (const flavour of [memory, redis]) {
  const d = flavour.available ? describe : describe.skip
  d(`Bus contract: ${flavour.name}`, () => {
    const buses: Bus[] = []
    let n = 0
    const topic = (): string => `contract:${++n}`
    const make = (historySize?: number): Made => {
      const made = flavour.make(historySize)
      buses.push(made.bus)
      return made
    }
    beforeAll(async () => {
      if (flavour === redis) client = await connectRedis()
    })
    afterEach(async () => {
      for (const bus of buses.splice(0)) await bus.close()
    })
    afterAll(() => flavour.teardown())

    test('publish assigns increasing cursors and delivers subscribed topics in order, once', async () => {
      const { bus } = make()
      const got: BusEvent[] = []
      bus.onEvent((e) => got.push(e))
      const t = topic()
      await bus.subscribe(t)
      const published: BusEvent[] = []
      for (let i = 0; i < 5; i++) published.push(await bus.publish(t, 'changed', JSON.stringify({ i })))
      await waitFor(() => got.length >= 5)
      expect(got).toEqual(published)
      expect(new Set(published.map((e) => e.id)).size).toBe(5)
    })

    test('events of topics the node does not hold, or no longer holds, are not delivered', async () => {
      const { bus } = make()
      const got: BusEvent[] = []
      bus.onEvent((e) => got.push(e))
      const held = topic()
      const other = topic()
      await bus.subscribe(held)
      await bus.subscribe(other)
      await bus.unsubscribe(other)
      await bus.publish(other, 'x', '1')
      const last = await bus.publish(held, 'x', '2')
      await waitFor(() => got.some((e) => e.id === last.id))
      expect(got.map((e) => e.topic)).toEqual([held])
    })

    test('history returns the events after a cursor, oldest first', async () => {
      const { bus } = make()
      const t = topic()
      const start = await bus.latest(t)
      const a = await bus.publish(t, 'a', '"a"')
      const b = await bus.publish(t, 'b', '"b"')
      const c = await bus.publish(t, 'c', '"c"')
      await bus.publish(topic(), 'other', 'null')
      expect(await bus.history(t, start)).toEqual([a, b, c])
      expect(await bus.history(t, a.id)).toEqual([b, c])
      expect(await bus.history(t, c.id)).toEqual([])
    })

    test('latest is a cursor for now: history from it holds exactly what came after', async () => {
      const { bus } = make()
      const t = topic()
      await bus.publish(t, 'before', '1')
      const now = await bus.latest(t)
      expect(await bus.history(t, now)).toEqual([])
      const after = await bus.publish(t, 'after', '2')
      expect(await bus.history(t, now)).toEqual([after])
    })

    test('a topic nobody published to has an empty history from latest', async () => {
      const { bus } = make()
      const t = topic()
      expect(await bus.history(t, await bus.latest(t))).toEqual([])
    })

    test.each(['', 'bogus', '0-0', '1-0', 'ffffffff-1', 'local:00000000:1', '999999999999999-0'])(
      'a cursor that is not one of ours (%p) gets null, never a wrong replay', async (cursor) => {
        const { bus } = make()
        const t = topic()
        await bus.publish(t, 'x', '1')
        expect(await bus.history(t, cursor)).toBeNull()
      })

    test('history that no longer reaches back to the cursor gets null', async () => {
      const { bus, overflow } = make(5)
      const t = topic()
      const first = await bus.publish(t, 'x', '0')
      for (let i = 1; i < overflow; i++) await bus.publish(t, 'x', String(i))
      expect(await bus.history(t, first.id)).toBeNull()
      const recent = await bus.latest(t)
      expect(await bus.history(t, recent)).toEqual([])
    })
  })
}

async function waitFor(check: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 5))
  }
}
