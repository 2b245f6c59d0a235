/**
 * The per-topic chain of the Redis bus, without Redis: exactly once, in
 * order, holes filled from a (fake) stream, resync where the stream cannot
 * vouch, epochs, and the validation of channel messages.
 */
import { Chain, compareIds, type Entry } from '../../lib/bus/redis-chain'
import { parseMessage } from '../../lib/bus/redis'

const E = '100-0.0000000a'
const ev = (n: number, prev = n - 1, epoch = E): Entry => ({ id: `${n}-0`, prev: `${prev}-0`, epoch, kind: 'event', type: 't', data: String(n) })

/** A chain over a fake stream `stream` (entries of epoch E by id), recording what it delivers. */
function setup(stream: Entry[] | null = [], delay = 0, throwOn?: string) {
  const out: string[] = []
  const fills: string[] = []
  const errors: unknown[] = []
  const chain = new Chain({
    fill: async (epoch, since, upto) => {
      fills.push(`${since}..${upto}`)
      if (delay > 0) await new Promise((r) => setTimeout(r, delay))
      if (stream === null || epoch !== E) return null
      return stream.filter((e) => compareIds(e.id, since) > 0 && (upto === '+' || compareIds(e.id, upto) <= 0))
    },
    deliver: (e) => {
      if (e.data === throwOn) throw new Error(`listener failed on ${e.data}`)
      out.push(e.data!)
    },
    resync: () => out.push('resync'),
    error: (err) => errors.push(err),
  })
  return { chain, out, fills, errors }
}

const tick = () => new Promise((r) => setTimeout(r, 5))

test('entries that follow each other are delivered at once, in order; repeats are dropped', () => {
  const { chain, out, fills } = setup()
  chain.start(E, '0-0')
  for (const n of [1, 2, 2, 3, 1]) chain.push(ev(n))
  expect(out).toEqual(['1', '2', '3'])
  expect(fills).toEqual([])
})

test('entries before the chain starts wait; those up to its start are dropped', () => {
  const { chain, out } = setup()
  chain.push(ev(1))
  chain.push(ev(2))
  chain.push(ev(3))
  expect(out).toEqual([])
  chain.start(E, '2-0')
  expect(out).toEqual(['3'])
})

test('a hole is filled from the stream before anything after it; later arrivals wait and are not repeated', async () => {
  const stream = [1, 2, 3, 4, 5].map((n) => ev(n))
  const { chain, out, fills } = setup(stream, 10)
  chain.start(E, '1-0')
  chain.push(ev(4)) // 2 and 3 were lost
  chain.push(ev(3)) // arrives late, during the fill
  chain.push(ev(5))
  expect(out).toEqual([])
  await new Promise((r) => setTimeout(r, 30))
  expect(out).toEqual(['2', '3', '4', '5'])
  expect(fills).toEqual(['1-0..4-0'])
})

test('a listener that throws while a hole is filled is reported, and the chain goes on (no unhandled rejection)', async () => {
  const stream = [1, 2, 3, 4].map((n) => ev(n))
  const { chain, out, errors } = setup(stream, 0, '2')
  chain.start(E, '1-0')
  chain.push(ev(4)) // 2 and 3 are filled from the stream; delivering 2 throws
  await tick()
  chain.push(ev(5))
  await tick()
  expect(errors).toHaveLength(1)
  expect(out.at(-1)).toBe('5')
})

test('a hole the stream cannot vouch for becomes one resync, then delivery goes on', async () => {
  const { chain, out } = setup(null)
  chain.start(E, '1-0')
  chain.push(ev(5, 4))
  chain.push(ev(6))
  await tick()
  expect(out).toEqual(['resync', '5', '6'])
})

test('a forged message whose id the stream does not hold is dropped without stalling the topic', async () => {
  const stream = [ev(1), ev(2)]
  const { chain, out } = setup(stream)
  chain.start(E, '1-0')
  chain.push({ ...ev(90, 89), data: 'forged' })
  await tick()
  chain.push(ev(2))
  await tick()
  expect(out).toEqual(['2'])
  expect(chain.lastId).toBe('2-0')
})

test('a newer epoch (the stream was lost and re-created) resyncs and goes on; an older epoch straggler is dropped', () => {
  // (Two epochs of one millisecond differ by their nonce: compareEpochs counts the one that comes second as newer.)
  const { chain, out } = setup()
  chain.start(E, '1-0')
  chain.push(ev(2))
  chain.push(ev(300, 200, '200-0.0000000b')) // new epoch
  chain.push(ev(3)) // old epoch, late
  chain.push(ev(301, 300, '200-0.0000000b'))
  expect(out).toEqual(['2', 'resync', '300', '301'])
})

test('catchUp reads what came after the last entry, once', async () => {
  const stream = [1, 2, 3].map((n) => ev(n))
  const { chain, out, fills } = setup(stream)
  chain.start(E, '1-0')
  chain.catchUp()
  await tick()
  chain.push(ev(3))
  chain.push(ev(4))
  expect(out).toEqual(['2', '3', '4'])
  expect(fills).toEqual(['1-0..+'])
})

test('a gap entry resyncs, in its place in the sequence', () => {
  const { chain, out } = setup()
  chain.start(E, '0-0')
  chain.push(ev(1))
  chain.push({ id: '2-0', prev: '1-0', epoch: E, kind: 'gap' })
  chain.push(ev(3))
  expect(out).toEqual(['1', 'resync', '3'])
})

test('reached() resolves when the chain gets to an id, false after the wait or on another epoch', async () => {
  const { chain } = setup()
  chain.start(E, '1-0')
  const waiting = chain.reached(E, '2-0', 1000)
  chain.push(ev(2))
  await expect(waiting).resolves.toBe(true)
  await expect(chain.reached(E, '9-0', 20)).resolves.toBe(false)
  await expect(chain.reached('5-0.0000000c', '2-0', 20)).resolves.toBe(false)
})

describe('channel messages are validated (they may not be ours)', () => {
  const now = Date.now()
  const good = { i: `${now}-1`, p: `${now}-0`, e: `${now}-0.0123abcd`, t: 'saved', d: { a: 1 } }
  test('a well-formed message becomes an entry; data is re-serialised from what was parsed', () => {
    expect(parseMessage(JSON.stringify(good))).toEqual({ id: `${now}-1`, prev: `${now}-0`, epoch: `${now}-0.0123abcd`, kind: 'event', type: 'saved', data: '{"a":1}' })
    expect(parseMessage(JSON.stringify({ i: good.i, p: good.p, e: good.e, g: 1 }))).toMatchObject({ kind: 'gap' })
  })
  test.each([
    ['an empty message', ''],
    ['not JSON', 'x\n["a","b"]'],
    ['a bad id', JSON.stringify({ ...good, i: 'x' })],
    ['an id from the future', JSON.stringify({ ...good, i: '9999999999999-0' })],
    ['an id a minute ahead of the clock (inside the old 60 s allowance)', JSON.stringify({ ...good, i: `${now + 59_000}-0` })],
    ['prev not before id', JSON.stringify({ ...good, p: good.i })],
    ['an epoch after the id', JSON.stringify({ ...good, e: `${now + 5}-0.0123abcd` })],
    ['an epoch without its nonce', JSON.stringify({ ...good, e: `${now}-0` })],
    ['no type', JSON.stringify({ ...good, t: '' })],
    ['no data', JSON.stringify({ i: good.i, p: good.p, e: good.e, t: 'x' })],
    ['a data text that would splice fields into the frame', `{"i":"${good.i}","p":"${good.p}","e":"${good.e}","t":"x","d":1,"topic":"other"`],
  ])('%s is rejected', (_t, message) => {
    expect(parseMessage(message)).toBeNull()
  })
})

test('a jump never goes back: entries delivered after the jump target was read are not delivered again', async () => {
  // A node reads where a stream stands (its reply on the command connection), while the subscriber connection
  // delivers later entries first: jumping to what it read would deliver those a second time.
  const { chain, out } = setup([1, 2, 3, 4, 5].map((n) => ev(n)))
  chain.start(E, '0-0')
  for (const n of [1, 2, 3]) chain.push(ev(n))
  chain.jump(E, '1-0')
  chain.push(ev(3))
  chain.push(ev(4))
  chain.jump('50-0.0000000b', '60-0') // an older epoch than the chain's: no going back either
  chain.push(ev(5))
  await tick()
  expect(out).toEqual(['1', '2', '3', 'resync', '4', 'resync', '5'])
  // Forward it does go: on a newer epoch, from the given id.
  chain.jump('200-0.0000000c', '201-0')
  chain.push({ ...ev(202, 201), epoch: '200-0.0000000c' })
  expect(out.slice(-2)).toEqual(['resync', '202'])
})
