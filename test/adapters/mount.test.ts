/** mountError: when a request shows the middleware is mounted under a prefix its `path` lacks. */
import { mountError } from '../../lib/adapters/mount'

describe('mountError', () => {
  test.each([
    ['no mount prefix', '/realtime', '/realtime/config', '/realtime/config'],
    ['a mount prefix that path includes', '/cms/realtime', '/cms/realtime/config', '/realtime/config'],
    ['a request that is not ours', '/realtime', '/cms/editor', '/editor'],
    ['a stray URL repeating a prefix that path includes', '/cms/realtime', '/cms/cms/realtime/config', '/cms/realtime/config'],
  ])('is silent for %s', (_t, path, originalUrl, url) => {
    expect(mountError(path, originalUrl, url)).toBeUndefined()
  })

  test('names the prefix and the path to use, query strings aside', () => {
    const err = mountError('/realtime', '/cms/realtime/config?x=1', '/realtime/config?x=1')
    expect(err).toBeInstanceOf(TypeError)
    expect(err?.message).toContain('mounted under "/cms" but option "path" is "/realtime"')
    expect(err?.message).toContain('{ path: "/cms/realtime" }')
  })

  test('works for nested prefixes', () => {
    expect(mountError('/realtime', '/a/b/realtime', '/realtime')?.message).toContain('{ path: "/a/b/realtime" }')
  })
})
