import { backoff, BACKOFF } from '../../lib/client/backoff'

describe('backoff (pure)', () => {
  test('grows by the factor from initialMs and stops at maxMs (no jitter)', () => {
    const o = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0 }
    expect([0, 1, 2, 3, 4, 5, 20].map((n) => backoff(n, o))).toEqual([100, 200, 400, 800, 1000, 1000, 1000])
  })

  test('jitter takes away at most its share of the delay', () => {
    const o = { initialMs: 1000, maxMs: 10_000, factor: 2, jitter: 0.5 }
    expect(backoff(0, o, () => 0)).toBe(1000)
    expect(backoff(0, o, () => 0.999999)).toBe(500)
    expect(backoff(3, o, () => 0.5)).toBe(6000)
  })

  test('full jitter spreads the delay over [0, d]', () => {
    expect(backoff(0, { initialMs: 1000, maxMs: 1000, factor: 2, jitter: 1 }, () => 0.75)).toBe(250)
  })

  test('defaults: 500 ms doubling to 30 s, half jittered; every delay stays within bounds', () => {
    expect(BACKOFF).toEqual({ initialMs: 500, maxMs: 30_000, factor: 2, jitter: 0.5 })
    for (let n = 0; n < 40; n++) {
      const d = backoff(n)
      const cap = Math.min(30_000, 500 * 2 ** n)
      expect(d).toBeGreaterThanOrEqual(cap / 2)
      expect(d).toBeLessThanOrEqual(cap)
    }
  })

  test('a negative attempt counts as the first', () => {
    expect(backoff(-3, { ...BACKOFF, jitter: 0 })).toBe(500)
  })
})
