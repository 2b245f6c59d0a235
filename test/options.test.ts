import { createRealtime } from '../lib/server/realtime'
import { defaultAuthorize, envFlag, resolveOptions, userId, ENV_ENABLED } from '../lib/options'

describe('resolveOptions', () => {
  test('defaults', () => {
    const o = resolveOptions({}, {})
    expect(o).toMatchObject({ path: '/realtime', webSocketEnabled: true, maxPayload: 4096, heartbeatMs: 25000 })
  })

  test('webSocketEnabled: false survives (no `||` defaults)', () => {
    expect(resolveOptions({ webSocketEnabled: false }, {}).webSocketEnabled).toBe(false)
  })

  test.each([
    ['false', false], ['0', false], ['off', false], ['NO', false],
    ['true', true], ['1', true], [' on ', true], ['', undefined],
  ])('the environment value %j reads as %s', (value, expected) => {
    expect(envFlag(value)).toBe(expected)
  })

  test(`${ENV_ENABLED}=false overrides the option`, () => {
    expect(resolveOptions({ webSocketEnabled: true }, { [ENV_ENABLED]: 'false' }).webSocketEnabled).toBe(false)
    expect(resolveOptions({ webSocketEnabled: false }, { [ENV_ENABLED]: 'true' }).webSocketEnabled).toBe(true)
  })

  test('the process environment reaches createRealtime', async () => {
    process.env[ENV_ENABLED] = 'false'
    try {
      const rt = createRealtime()
      expect(rt.webSocketEnabled).toBe(false)
      await rt.close()
    } finally {
      delete process.env[ENV_ENABLED]
    }
  })

  test.each([
    [{ path: 'realtime' }, /"path"/],
    [{ path: '/realtime/' }, /"path"/],
    [{ maxPayload: 0 }, /"maxPayload"/],
    [{ heartbeatMs: Number.NaN }, /"heartbeatMs"/],
    [{ webSocketEnabled: 'no' }, /"webSocketEnabled"/],
    [{ authorize: 'yes' }, /"authorize"/],
    [{ allowedOrigins: 'https://a.example' }, /"allowedOrigins"/],
    [{ webSocketEnable: true }, /unknown option "webSocketEnable"/],
  ])('misuse throws a TypeError naming the option: %j', (options, message) => {
    expect(() => resolveOptions(options as never, {})).toThrow(TypeError)
    expect(() => resolveOptions(options as never, {})).toThrow(message)
  })

  test('a nonsense environment value is a startup error, not a silent default', () => {
    expect(() => resolveOptions({}, { [ENV_ENABLED]: 'maybe' })).toThrow(ENV_ENABLED)
  })
})

describe('identity and default authorisation', () => {
  test.each([
    [{ id: 'anna' }, 'anna'], [{ id: 42 }, '42'], ['bob', 'bob'], [7, '7'], [null, undefined], [{ name: 'x' }, undefined],
  ])('userId(%j) is %j', (user, id) => {
    expect(userId(user)).toBe(id)
  })

  test('personal notification topics belong to their user; other topics are open', () => {
    expect(defaultAuthorize({ id: 'anna' }, 'notifications:anna')).toBe(true)
    expect(defaultAuthorize({ id: 'anna' }, 'notifications:bob')).toBe(false)
    expect(defaultAuthorize({ id: 'anna' }, 'notifications:anna2')).toBe(false)
    expect(defaultAuthorize(null, 'notifications:anna')).toBe(false)
    expect(defaultAuthorize(null, 'project:1')).toBe(true)
  })
})
