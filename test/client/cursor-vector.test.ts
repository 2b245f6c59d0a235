import { decodeCursors, encodeCursors } from '../../lib/client/cursor-vector'

describe('the SSE cursor vector', () => {
  test('round-trips cursors, empty positions and cursors holding the separator or %', () => {
    const v = ['3f2a9c01-17', undefined, 'a,b%c', '1700000000000-0']
    const text = encodeCursors(v)
    expect(text).toBe('3f2a9c01-17,,a%2Cb%25c,1700000000000-0')
    expect(decodeCursors(text, 4)).toEqual(v)
  })

  test('is never multi-line (an SSE id must not hold a line break)', () => {
    expect(encodeCursors(['a\nb', 'c\rd'])).not.toMatch(/[\r\n]/)
  })

  test.each([
    ['the wrong number of cursors', 'a,b', 3],
    ['bad percent-encoding', '%zz', 1],
    ['a cursor over the length limit', 'x'.repeat(65), 1],
  ])('rejects %s', (_t, text, count) => {
    expect(decodeCursors(text, count)).toBeNull()
  })
})
